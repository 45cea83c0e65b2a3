"""Looking at attribution maps: normalisation, colormaps, overlays, grids, figures, PNG files.

* :func:`normalize`: maps (any layout, torch or numpy) to ``[0, 1]`` (or ``[-1, 1]`` signed),
  channels reduced, one scale per map;
* :func:`colorize`, :func:`to_rgb`, :func:`draw_boxes`, :func:`draw_outline`, :func:`overlay`:
  RGB ``uint8`` ``[H, W, 3]`` pictures, made with numpy alone (the built-in colormaps need no
  matplotlib: ``"viridis"``, the default, perceptually uniform; ``"RdBu_r"`` for signed maps,
  centred at 0; ``"jet"`` only on request; ``"gray"``); ground truth is outlined just outside
  the region, so it never hides the map;
* :func:`volume_panels`: orthogonal slices and MIPs of ``[D, H, W]`` maps;
* :func:`grid`: several pictures in one array, wrapping rows (labels need Pillow);
* :func:`plot_attributions`, :func:`plot_volume`: matplotlib figures with method display names
  (:func:`display_name`), colour bars in the map's units and the threshold stated;
* :func:`save_png`, :func:`save_figure`: PNG (Pillow or ``savefig`` at a chosen DPI), SVG, PDF,
  written atomically.

``MODES``: the normalisation modes of :func:`normalize` (``minmax``, ``abs``, ``percentile``);
``BUILTIN_CMAPS``: the colormaps that need no matplotlib (``jet``, ``gray``).

The viewing convention of the clinical pipeline (see ``metrics.md``): hide the pixels below
``0.2 * max`` of the map (say so next to the picture), blend the colormap 50/50 over the image
where the map is shown, outline the ground-truth boxes, save a PNG::

    picture = overlay(image, saliency, threshold=0.2, alpha=0.5, boxes=boxes)   # uint8 [H, W, 3]
    save_png("overlays/img_0007.png", picture)

matplotlib and Pillow are optional (``pip install "torchattr[viz]"``) and are imported inside the
functions that need them, never when this module is imported.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from torchattr._core.checks import check_choice
from torchattr.io import write_atomic

__all__ = [
    "BUILTIN_CMAPS",
    "MODES",
    "colorize",
    "colormap",
    "draw_boxes",
    "grid",
    "normalize",
    "overlay",
    "plot_attributions",
    "save_png",
    "to_rgb",
]

PathLike = str | os.PathLike[str]
Array = Tensor | np.ndarray

MODES = ("minmax", "abs", "percentile")
BUILTIN_CMAPS = ("viridis", "RdBu_r", "jet", "gray")
DEFAULT_CMAP = "viridis"  # perceptually uniform: equal steps of the map look like equal steps
DIVERGING_CMAP = "RdBu_r"  # signed maps: blue < 0 < red, white at 0
OUTLINES = ("outside", "border")
# Method names as figures and reports print them (others: underscores become spaces).
DISPLAY_NAMES = {
    "saliency": "Saliency",
    "input_x_gradient": "Input x Gradient",
    "smoothgrad": "SmoothGrad",
    "integrated_gradients": "Integrated Gradients",
    "gradcam": "Grad-CAM",
    "gradcam++": "Grad-CAM++",
    "layercam": "LayerCAM",
    "scorecam": "Score-CAM",
    "lrp": "LRP",
    "random": "Random (reference)",
    "proportional_energy": "Proportional energy",
    "saliency_focus": "Saliency focus",
    "pointing_game": "Pointing game",
    "relevance_rank_accuracy": "Relevance rank accuracy",
    "road": "ROAD",
    "road_score": "ROAD",
}
LUT_SIZE = 256  # entries of every colormap's lookup table, as in matplotlib
INSTALL_HINT = 'pip install "torchattr[viz]"'

# matplotlib's "jet" (LinearSegmentedColormap segment data: (x, value) knots per channel).
_JET = (
    ((0.0, 0.0), (0.35, 0.0), (0.66, 1.0), (0.89, 1.0), (1.0, 0.5)),
    ((0.0, 0.0), (0.125, 0.0), (0.375, 1.0), (0.64, 1.0), (0.91, 0.0), (1.0, 0.0)),
    ((0.0, 0.5), (0.11, 1.0), (0.34, 1.0), (0.65, 0.0), (1.0, 0.0)),
)

# matplotlib's "viridis" and "RdBu_r" (256 entries each), as 16-bit hex RGB triples: built in so
# that pictures do not depend on whether matplotlib is installed.
_TABLES = {
    "viridis": (
        "445a013f545444bd027555de451b03be57644574051b58e645c8068b5a64461808105bdd466309aa5d5246a90b4e5ec3"
        "46ea0ce3602e47270e6b6195475f0fe962f74791115e645447bf12cb65ac47e8143366ff480d1596684c482c16f46994"
        "4846184f6ad6485c19a66c12486d1afb6d4948781c4d6e7a487f1d9d6fa548811eeb70ca487f203771e8487721827301"
        "486b22cc7413485a2414751f4844255a7625482926a07724480a27e5781d47e72928790f47bf2a6b79fb47922bac7ae1"
        "47612ced7bbf472c2e2c7c9846f22f6b7d6946b430a87e35467331e57efa462d33217fb845e3345b8070459635958122"
        "454536cd81ce44f1380482734499393a8312443e3a6f83ac43e03ba3843f437f3cd584cd431b3e06855542b53f3685d8"
        "424b4064865541e0419186cc417242bd873f410243e787ac409045108815401c463888793fa6475e88d83f2f48828933"
        "3eb649a589893e3c4ac689dc3dc14be68a2a3d464d058a743cc94e218abb3c4b4f3d8afe3bcd50578b3d3b4f516f8b7a"
        "3ad052868bb33a51539b8be939d254af8c1c395355c28c4d38d456d38c7a385557e38ca637d758f18ccf375959fe8cf5"
        "36dc5b098d1a365f5c148d3c35e35d1d8d5d35685e258d7c34ee5f2b8d99347460318db433fc61358dcd338462388de6"
        "330e633a8dfc3298643b8e123224653b8e2631b0663a8e39313e67388e4b30cd68358e5b305d69318e6b2fee6a2c8e79"
        "2f806b278e872f146c218e932ea86d1a8e9f2e3e6e128ea92dd46f0a8eb32d6b70018ebc2d0470f88ec42c9d71ee8ecb"
        "2c3772e48ed12bd273d98ed62b6e74cd8eda2b0a75c18ede2aa776b58ee02a4577a98ee229e3789c8ee22982798f8ee2"
        "29217a818ee028c17b738edd28617c668ed928017d588ed427a27e498ece27437f3b8ec626e4802c8ebd2685811e8eb3"
        "2627820f8ea725c983008e9a256c83f28e8b250f84e38e7b24b285d48e69245686c58e5523fa87b68e3f239f88a78e27"
        "234589998e0e22eb8a8a8df222948b7b8dd4223d8c6c8db421e88d5d8d9221948e4f8d6d21438f408d4620f490328d1d"
        "20a891238cf1205f92148cc2201a93068c901fd893f78c5c1f9b94e98c251f6395da8beb1f3096cc8bad1f0397bd8b6d"
        "1edd98af8b2a1ebe99a08ae31ea79a918a991e989b828a4b1e929c7389fa1e969d6489a61ea49e55894e1ebe9f4588f2"
        "1ee2a03688921f13a126882f1f50a21687c81f9aa305875c1ff1a3f586ed2057a4e4867a20caa5d28603214ca6c08588"
        "21dca7ae8508227ba89c84842329a98983fc23e5aa75836f24afab6182de2588ac4c82492670ad3781af2765ae218111"
        "2869af0b806e297aaff37fc62a98b0db7f1a2bc3b1c27e692cfbb2a97db42e3fb38e7cf92f8fb4737c3a30ebb5577b76"
        "3252b63a7aae33c4b71b79e03541b7fc790e36c8b8dc7836385ab9ba775a39f5ba9876793b9abb7475933d47bc4f74a8"
        "3efebd2873b740bebe0172c24286bed871c84456bfad70c9462ec0826fc5480fc1546ebb49f6c2256dad4be6c2f56c99"
        "4ddcc3c36b814fdac48f6a6351dfc55a694153eac623681955fcc6ea66ec5815c7af65ba5a34c87364835c59c9346347"
        "5e84c9f4620660b6cab160c062edcb6d5f75652acc275e25676cccde5cd069b4cd935b766c02ce465a166e54cef758b2"
        "70accfa657497309d05255db756bd0fc546977d2d1a452f17a3dd24951757cadd2ec4ff47f22d38d4e6e819ad42a4ce4"
        "8418d4c64b568699d55f49c2891ed5f5482b8ba7d689468f8e34d71a44ef90c4d7a9434c9358d83541a495eed8be3ff9"
        "9888d9453e4b9b25d9c93c999dc5da4a3ae4a067dac9392da30bdb453774a5b2dbbf35b9a85bdc3633fdab05dcab3240"
        "adb1dd1d3083b05edd8d2ec7b30cddfb2d0cb5bbde662b54b86bdece29a0bb1bdf3527f1bdcbdf992649c07bdffc24aa"
        "c32ae05c2316c5d9e0bb2190c887e118201acb33e1731eb9cddee1cd1d6ed087e2251c40d32ee27c1b31d5d3e2d21a47"
        "d876e3271986db16e37a18f3ddb2e3cd1890e04ce4201862e2e2e472186ae574e4c318a9e803e514191fea8ee56519c8"
        "ed14e5b71aa4ef96e6081baef214e6591ce3f48ee6ab1e3ef702e6fe1fbaf972e7512156fbdee7a4230cfe45e7f924d9"
    ),
    "RdBu_r": (
        "050530306161061f32506455073934706749085436916a3d096e38b16d310a883ad170240ba23cf173180cbc3f12760c"
        "0dd7413279000ef143527bf4100b45727ee81125479381dc123f49b384d0135a4bd387c314744df38ab7158e50148dab"
        "16a85234909f17c25454939318dd5674968719f75894997b1b115ab59c6f1c2b5cd59f631d455ef5a2561e606115a54a"
        "1f7a6336a83e20946556ab3221cc6749ad202323690eae08247a6ad4aef025d06c99afd727276e5fb0bf287e7024b1a7"
        "29d471eab28f2b2b73afb3772c827575b45e2dd8773bb5462f2f7900b62e30867ac6b71631dc7c8bb7fe33337e51b8e5"
        "348a8016b9cd35e081dcbab5373783a1bb9d388e8567bc8539e4872cbd6c3b3b88f2be543c928ab7bf3c3de88c7dc024"
        "3f3f8e42c10c40969008c1f341ec91cdc2db43439393c3c3465f958bc4d3497b9783c5e34c98997bc6f34fb49b73c803"
        "52d09d6bc91455ec9f63ca245908a15acb345c25a352cc445f41a54acd54625da742ce646579a93acf746895ab32d084"
        "6bb2ad2ad1956eceaf22d2a571eab11ad3b57506b312d4c57822b50ad5d57b3fb702d6e57e5bb8fad7f58177baf1d905"
        "8493bce9da1587afbee1db268accc0d9dc368de8c2d1dd469104c4c9de5693cfc666df39964ac7a9dfee98c5c8ebe0a4"
        "9b40ca2ee1599dbbcb70e20ea036ccb3e2c4a2b1cdf5e379a52ccf38e42fa7a7d07ae4e4aa22d1bde599ac9dd2ffe64f"
        "af18d442e704b193d584e7bab40ed6c7e86fb689d809e924b904d94ce9dabb7fda8eea8fbdf9dbd1eb45c074dd13ebfa"
        "c2efde56ecb0c56adf98ed65c7e5e0dbee1aca60e21deed0ccdbe360ef85cf56e4a2f03bd1d1e5e5f0f0d350e69af137"
        "d4cfe750f17dd64ee805f1c4d7cde8bbf20ad94ce970f251dacbea25f297dc4aeadbf2deddc9eb90f324df48ec46f36b"
        "e0c7ecfbf3b1e246edb1f3f8e3c5ee66f43fe544ef1bf485e6c3efd1f4cce842f086f512e9c1f13cf559eb40f1f1f59f"
        "ecbff2a6f5e6ee3ef35cf62cefbdf411f673f13cf4c7f6baf2bbf57cf700f43af631f747f5b9f6e7f78df738f79cf7d4"
        "f815f76af705f852f650f521f88ef536f33ef8cbf41bf15af907f301ef76f944f1e7ed92f980f0cdebaff9bdefb3e9cb"
        "f9f9ee98e7e7fa35ed7ee603fa72ec64e41ffaaeeb4ae23cfaebea30e058fb27e915de74fb64e7fbdc90fba0e6e1daad"
        "fbdde5c7d8c9fc19e4add6e5fc56e392d501fc92e278d31efccfe15ed13afd0be044cf56fd48df2acd72fd84de0fcb8f"
        "fdc1dcf5c9abfdfddbdbc7c7fda2d9bbc510fd48d79bc258fcedd57abfa1fc92d35abce9fc37d13aba32fbddcf1ab77b"
        "fb82ccf9b4c3fb27cad9b20cfacdc8b9af54fa72c699ac9dfa17c478a9e5f9bdc258a72ef962c038a477f907be18a1bf"
        "f8acbbf79f08f852b9d79c50f7f7b7b79999f79cb59796e2f742b377942af6e7b1569173f68caf368ebbf631ad168c04"
        "f5d7aaf6894df57ca8d58695f521a6b583def45da4498177f32ea1927f61f2009eda7d4bf0d29c237b34efa3996c791e"
        "ee7596b47708ed4793fd74f2ec18914572dceaea8e8e70c6e9bc8bd76eb0e88d891f6c99e75f86686a83e63183b0686d"
        "e50280f96657e3d47e426441e2a67b8a622be17778d36014e049761b5dfedf1a73645be8ddec70ac59d2dcbe6df557bc"
        "db8f6b3e55a6da616886538fd93365cf5179d80463174f63d6d660604d4dd56b5d8a4bf6d4005ab54aa0d29657df4949"
        "d12b550947f2cfc05234469cce554f5e4545ccea4c8843eecb7f49b34298ca1546dd4141c8aa44083feac73f41323e94"
        "c5d43e5c3d3dc4693b873be6c2fe38b13a90c19435db3939c029330637e2bebe3030368cbd532d5a3535bbe82a8533de"
        "ba7e27af3288b91324d93131b7a822042fdab63d1f2e2e84b4d21c582d2db36719832bd6b138179f2aefae4416ad2a76"
        "ab5015bb29fda85c14c92984a56913d8290ba27512e628929f8111f428199c8d110227a099991010272796a50f1e26ae"
        "93b10e2c263590bd0d3a25bc8dc90c4825438ad60b5724ca87e20a65245184ee097323d881fa0881235f7f06078f22e7"
        "7c12069d226e791e05ab21f5762a04b9217c733703c82103704302d6208a6d4f01e420116a5b00f21f98676700001f1f"
    ),
}


# Normalisation


def normalize(
    attribution: Array,
    mode: str = "minmax",
    *,
    percentiles: tuple[float, float] = (1.0, 99.0),
    signed: bool = False,
    batched: bool = False,
) -> Array:
    """Scale attribution maps for display, one scale per map: ``[0, 1]``, or ``[-1, 1]`` signed.

    Layouts: ``[H, W]`` (one map), ``[C, H, W]`` (one image's channels), ``[B, C, H, W]`` (a
    batch); ``batched=True`` reads a 3-D input as ``[B, H, W]`` instead (e.g. ``ta.saliency``
    or ``ta.cam`` output). Channels are reduced first, giving ``[H, W]`` or ``[B, H, W]``:
    ``R = max_c |A_c|`` (as :func:`torchattr.reduce_channels`, the saliency convention), or
    ``R = sum_c A_c`` when ``signed=True`` (a pixel's net contribution). Without channels
    ``R = A``. Then, per map:

    * ``"minmax"``: ``(R - min R) / (max R - min R)``;
    * ``"abs"``: ``|R| / max |R|``;
    * ``"percentile"``: ``|R|`` clipped to its ``percentiles = (lo, hi)`` (linear interpolation,
      as :func:`numpy.percentile`), then min-max scaled: outliers no longer flatten the rest.
      A map whose non-zero pixels are fewer than ``100 - hi`` percent clips to zeros;
    * ``signed=True`` (``"minmax"`` or ``"percentile"``) keeps the sign: ``R / max |R|``, or
      ``clip(R / q, -1, 1)`` with ``q`` the ``hi`` percentile of ``|R|`` (``lo`` is unused).

    A constant map (after the channel reduction) becomes zeros in every mode: it ranks no pixel
    above another.

    Args:
        attribution: a real tensor or numpy array, finite.
        mode: ``"minmax"``, ``"abs"`` or ``"percentile"``.
        percentiles: ``(lo, hi)`` with ``0 <= lo < hi <= 100``.
        signed: keep the sign (result in ``[-1, 1]``); not with ``mode="abs"``.
        batched: read a 3-D input as ``[B, H, W]`` rather than ``[C, H, W]``.

    Returns:
        The same kind as the input (tensor on its device, or numpy array), ``[H, W]`` or
        ``[B, H, W]``, float64 for float64 input, else float32.

    Example::

        maps = normalize(ta.integrated_gradients(model, images), "percentile")   # [B, H, W]
        heat = normalize(ta.saliency(model, images), batched=True)              # [B, H, W]
        signed = normalize(ta.input_x_gradient(model, images)[0], signed=True)  # [H, W]
    """
    as_numpy = isinstance(attribution, np.ndarray)
    values = _real_tensor(attribution, "attribution")
    check_choice(mode, "mode", MODES)
    for name, flag in (("signed", signed), ("batched", batched)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool, got {type(flag).__name__}")
    if signed and mode == "abs":
        raise ValueError("mode='abs' discards the sign: signed=True needs 'minmax' or 'percentile'")
    low, high = _check_percentiles(percentiles)
    if values.ndim not in (2, 3, 4) or values.numel() == 0:
        raise ValueError(
            f"attribution has shape {list(values.shape)}: expected [H, W], [C, H, W], "
            "[B, C, H, W] or, with batched=True, [B, H, W], not empty"
        )
    if not torch.isfinite(values).all():
        raise ValueError("attribution holds NaN or infinite values")
    dtype = torch.float64 if values.dtype == torch.float64 else torch.float32
    values = values.detach().to(dtype)
    maps = values
    if values.ndim == 4 or (values.ndim == 3 and not batched):  # reduce the channels
        maps = values.sum(dim=-3) if signed else values.abs().amax(dim=-3)
    out_shape = maps.shape
    flat = maps.reshape(-1, out_shape[-2] * out_shape[-1])
    constant = (flat.amax(dim=1) == flat.amin(dim=1))[:, None]
    if signed:
        magnitude = flat.abs()
        scale = magnitude.amax(dim=1) if mode == "minmax" else _percentile(magnitude, high)
        scale = scale[:, None]
        result = (flat / torch.where(scale > 0, scale, torch.ones_like(scale))).clamp(-1, 1)
    elif mode == "abs":
        flat = flat.abs()
        result = flat / flat.amax(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
    elif mode == "percentile":
        flat = flat.abs()
        lower, upper = _percentile(flat, low)[:, None], _percentile(flat, high)[:, None]
        result = _minmax_rows(torch.minimum(torch.maximum(flat, lower), upper))
    else:
        result = _minmax_rows(flat)
    result = torch.where(constant, torch.zeros_like(result), result).reshape(out_shape)
    return result.cpu().numpy() if as_numpy else result


def _percentile(rows: Tensor, q: float) -> Tensor:
    """The ``q``-th percentile of each row ``[N, M] -> [N]`` (numpy's linear interpolation)."""
    ordered = rows.sort(dim=1).values
    position = q / 100 * (rows.shape[1] - 1)
    below, above = math.floor(position), math.ceil(position)
    fraction = position - below
    return ordered[:, below] + fraction * (ordered[:, above] - ordered[:, below])


def _minmax_rows(rows: Tensor) -> Tensor:
    low = rows.amin(dim=1, keepdim=True)
    span = rows.amax(dim=1, keepdim=True) - low
    scaled = (rows - low) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(span > 0, scaled, torch.zeros_like(scaled)).clamp(0, 1)


def _check_percentiles(percentiles: Any) -> tuple[float, float]:
    try:
        low, high = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise TypeError(f"percentiles must be two numbers (lo, hi), got {percentiles!r}") from None
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= lo < hi <= 100, got {percentiles!r}")
    return low, high


def _real_tensor(value: Any, name: str) -> Tensor:
    """A tensor view of a real tensor or numpy array (integers become float32)."""
    if isinstance(value, np.ndarray):
        if not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)):
            raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
        value = torch.from_numpy(np.ascontiguousarray(value))
    elif not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a tensor or a numpy array, got {type(value).__name__}")
    if value.dtype == torch.bool or value.is_complex():
        raise TypeError(f"{name} must hold real numbers, got dtype {value.dtype}")
    return value if value.is_floating_point() else value.float()


def _numpy(value: Any, name: str) -> np.ndarray:
    """A float64 numpy copy of a real tensor or array (CPU, detached)."""
    return _real_tensor(value, name).detach().to("cpu", torch.float64).numpy()


# Colours


def colormap(cmap: str = DEFAULT_CMAP) -> np.ndarray:
    """The colormap's lookup table: float64 ``[256, 3]`` RGB in [0, 1], from low to high.

    Built in (the same tables as matplotlib's, so pictures do not depend on whether matplotlib
    is installed): ``"viridis"`` (the default everywhere: perceptually uniform, readable in grey
    and by most colour-blind viewers), ``"RdBu_r"`` (diverging, for signed maps: blue below 0,
    white at 0, red above), ``"jet"`` (only on request: its bright bands invent edges) and
    ``"gray"``. Any other name is looked up in ``matplotlib.colormaps`` (``"inferno"``, ...),
    which needs the ``viz`` extra.

    Example::

        colormap("viridis")[-1]    # [0.993, 0.906, 0.144]: yellow
    """
    if not isinstance(cmap, str):
        raise TypeError(f"cmap must be a colormap name, got {type(cmap).__name__}")
    points = np.linspace(0.0, 1.0, LUT_SIZE)
    if cmap == "gray":
        return np.repeat(points[:, None], 3, axis=1)
    if cmap == "jet":
        return np.stack([_segment_lut(points, knots) for knots in _JET], axis=1)
    if cmap in _TABLES:
        text = "".join(_TABLES[cmap])
        values = [int(text[i : i + 4], 16) for i in range(0, len(text), 4)]
        return np.array(values, dtype=np.float64).reshape(LUT_SIZE, 3) / 65535
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            f"cmap {cmap!r} needs matplotlib ({INSTALL_HINT}); built in without it: "
            + ", ".join(repr(c) for c in BUILTIN_CMAPS)
        ) from None
    if cmap not in matplotlib.colormaps:
        raise ValueError(
            f"unknown cmap {cmap!r}: expected a matplotlib colormap name, e.g. {DEFAULT_CMAP!r}"
        )
    return np.asarray(matplotlib.colormaps[cmap].resampled(LUT_SIZE)(points), np.float64)[:, :3]


def display_name(name: str) -> str:
    """A method's or metric's name as figures print it: ``"integrated_gradients"`` ->
    ``"Integrated Gradients"`` (:data:`DISPLAY_NAMES`); other names get spaces for underscores.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    return DISPLAY_NAMES.get(name, name.replace("_", " "))


def _segment_lut(points: np.ndarray, knots: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Piecewise-linear channel through ``knots`` at ``points``, computed as matplotlib does."""
    x, y = (np.array(column) for column in zip(*knots, strict=True))
    x, points = x * (len(points) - 1), points * (len(points) - 1)
    ind = np.searchsorted(x, points)[1:-1]
    distance = (points[1:-1] - x[ind - 1]) / (x[ind] - x[ind - 1])
    inner = distance * (y[ind] - y[ind - 1]) + y[ind - 1]
    return np.clip(np.concatenate([y[:1], inner, y[-1:]]), 0.0, 1.0)


def colorize(values: Array, cmap: str | None = None, *, signed: bool = False) -> np.ndarray:
    """Colour values with a colormap: ``[...] -> uint8 [..., 3]``.

    Values in [0, 1] (``signed=False``; default cmap ``"viridis"``) or in [-1, 1]
    (``signed=True``; default cmap ``"RdBu_r"``, 0 at its white centre: ``v -> (v + 1) / 2``).
    ``u`` in [0, 1] takes entry ``min(floor(256 u), 255)`` of :func:`colormap` (as matplotlib
    does); values outside the range are clipped.

    Example::

        picture = colorize(normalize(ta.saliency(model, images)[0]))   # uint8 [H, W, 3]
    """
    data = _numpy(values, "values")
    if not np.isfinite(data).all():
        raise ValueError("values hold NaN or infinite values")
    if not isinstance(signed, bool):
        raise TypeError(f"signed must be a bool, got {type(signed).__name__}")
    if signed:
        data = (np.clip(data, -1, 1) + 1) / 2
    return _to_uint8(colormap(_cmap(cmap, signed))[_lut_index(data)] * 255)


def _cmap(cmap: str | None, signed: bool) -> str:
    """The colormap to use: ``cmap``, else the default for signed or unsigned maps."""
    if cmap is None:
        return DIVERGING_CMAP if signed else DEFAULT_CMAP
    return cmap


def _lut_index(values: np.ndarray) -> np.ndarray:
    """Lookup-table entries of values in [0, 1]: ``min(floor(256 v), 255)``."""
    return np.minimum(np.floor(np.clip(values, 0, 1) * LUT_SIZE), LUT_SIZE - 1).astype(np.intp)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.rint(np.clip(values, 0, 255)).astype(np.uint8)


# Pictures


def to_rgb(image: Array, size: tuple[int, int] | None = None) -> np.ndarray:
    """An image as an RGB ``uint8`` array ``[H, W, 3]`` (grey levels repeated over R, G, B).

    Layouts: ``[H, W]``, ``[1, H, W]``, ``[H, W, 1]``, ``[3, H, W]``, ``[H, W, 3]``. When both
    channel positions fit (a ``3 x 3 x 3`` image), ``size = (H, W)`` decides, then channels first.
    Values: ``uint8`` as they are; other real numbers in [0, 1] are scaled by 255, anything else
    is min-max scaled to [0, 1] first (a constant image becomes black).

    Example::

        to_rgb(images[0])   # [1, 64, 64] float in [0, 1] -> uint8 [64, 64, 3]
    """
    is_uint8 = (isinstance(image, np.ndarray) and image.dtype == np.uint8) or (
        isinstance(image, Tensor) and image.dtype == torch.uint8
    )
    data = _numpy(image, "image")
    layout = _layout(data.shape, size)
    if layout == "chw":
        data = np.moveaxis(data, 0, -1)
    elif layout == "hw":
        data = data[..., None]
    if not np.isfinite(data).all():
        raise ValueError("image holds NaN or infinite values")
    if not is_uint8:
        if data.size and (data.min() < 0 or data.max() > 1):
            low, high = data.min(), data.max()
            data = (data - low) / (high - low) if high > low else np.zeros_like(data)
        data = data * 255
    return np.repeat(_to_uint8(data), 3 // data.shape[-1], axis=-1)


def _layout(shape: tuple[int, ...], size: tuple[int, int] | None) -> str:
    """``"hw"``, ``"chw"`` or ``"hwc"``: how an image's dimensions are laid out."""
    if len(shape) == 2:
        candidates = [("hw", shape)]
    elif len(shape) == 3:
        candidates = [("chw", shape[1:])] if shape[0] in (1, 3) else []
        candidates += [("hwc", shape[:2])] if shape[2] in (1, 3) else []
    else:
        candidates = []
    if not candidates:
        raise ValueError(
            f"image has shape {list(shape)}: expected [H, W], [1, H, W], [3, H, W], [H, W, 1] "
            "or [H, W, 3]"
        )
    fitting = [name for name, spatial in candidates if size is None or spatial == tuple(size)]
    if not fitting:
        raise ValueError(
            f"image has shape {list(shape)} but saliency has {list(size or ())}: "
            "the map must have the image's H x W"
        )
    return fitting[0]


def draw_boxes(
    image: np.ndarray,
    boxes: Any,
    *,
    color: tuple[int, int, int] = (0, 255, 0),
    outline: str = "border",
) -> np.ndarray:
    """Draw boxes as 1-pixel rectangle outlines on a copy of an RGB ``uint8`` ``[H, W, 3]`` image.

    ``boxes``: XYXY pixel coordinates with exclusive ends (``M[y1:y2, x1:x2]`` is the box, as in
    :mod:`torchattr.metrics`), a ``[N, 4]`` (or ``[4]``) tensor / array / nested list, possibly
    empty. Fractional coordinates widen the box to whole pixels (``floor`` the starts, ``ceil``
    the ends); boxes are clipped to the image, and one that ends up empty is not drawn.
    ``outline="border"``: the box's own border pixels (rows ``y1`` and ``y2 - 1``, columns
    ``x1`` and ``x2 - 1``); ``outline="outside"``: the ring of pixels just outside the boxes
    (:func:`draw_outline` of their union), so no pixel inside a box is covered.

    Example::

        framed = draw_boxes(to_rgb(image), torch.tensor([[10, 12, 20, 18]]))
    """
    _check_picture(image, "image")
    rgb = _check_color(color, "color")
    check_choice(outline, "outline", OUTLINES)
    height, width = image.shape[:2]
    if outline == "outside":
        return draw_outline(image, boxes_mask(boxes, height, width), color=color)
    out = image.copy()
    for x1, y1, x2, y2 in _pixel_boxes(boxes, height, width):
        out[[y1, y2 - 1], x1:x2] = rgb
        out[y1:y2, [x1, x2 - 1]] = rgb
    return out


def boxes_mask(boxes: Any, height: int, width: int) -> np.ndarray:
    """The union of XYXY boxes (see :func:`draw_boxes`) as a bool mask ``[height, width]``."""
    mask = np.zeros((height, width), dtype=bool)
    for x1, y1, x2, y2 in _pixel_boxes(boxes, height, width):
        mask[y1:y2, x1:x2] = True
    return mask


def draw_outline(
    image: np.ndarray, mask: Array, *, color: tuple[int, int, int] = (0, 255, 0)
) -> np.ndarray:
    """Outline a region without covering it: a copy of ``image`` with the ring around ``mask``.

    The ring is ``dilate(mask) & ~mask`` (the pixels outside the mask that touch it, diagonals
    included): every pixel of the region keeps its colour, so an outline never hides the map
    where it matters most. ``image``: RGB ``uint8`` ``[H, W, 3]``; ``mask``: ``[H, W]`` (non-zero
    is inside; a ground-truth segmentation, or :func:`boxes_mask`).

    Example::

        framed = draw_outline(overlay(image, saliency), lesion_mask)
    """
    _check_picture(image, "image")
    rgb = _check_color(color, "color")
    region = _mask(mask)
    if region.shape != image.shape[:2]:
        raise ValueError(
            f"mask has shape {list(region.shape)} but image is {list(image.shape[:2])}: "
            "expected the image's [H, W]"
        )
    out = image.copy()
    out[_ring(region)] = rgb
    return out


def _mask(mask: Any) -> np.ndarray:
    """A bool numpy copy of a mask (tensor or array; non-zero is inside)."""
    if isinstance(mask, Tensor):
        mask = mask.detach().cpu().numpy()
    if not isinstance(mask, np.ndarray):
        raise TypeError(f"mask must be a tensor or a numpy array, got {type(mask).__name__}")
    return mask != 0


def _ring(region: np.ndarray) -> np.ndarray:
    """``dilate(region) & ~region`` with a 3 x 3 structuring element."""
    padded = np.pad(region, 1)
    height, width = region.shape
    grown = np.zeros_like(region)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            grown |= padded[dy : dy + height, dx : dx + width]
    return grown & ~region


def _check_picture(image: Any, name: str) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError(f"{name} must be a uint8 numpy array [H, W, 3] (see to_rgb)")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"{name} has shape {list(image.shape)}: expected [H, W, 3]")


def _pixel_boxes(boxes: Any, height: int, width: int) -> list[tuple[int, int, int, int]]:
    """Boxes widened to whole pixels and clipped to the image; empty ones left out."""
    result = []
    for x1, y1, x2, y2 in _check_boxes(boxes):
        x1, x2 = max(math.floor(x1), 0), min(math.ceil(x2), width)
        y1, y2 = max(math.floor(y1), 0), min(math.ceil(y2), height)
        if x2 > x1 and y2 > y1:
            result.append((x1, y1, x2, y2))
    return result


def _check_boxes(boxes: Any) -> np.ndarray:
    if isinstance(boxes, Tensor):
        boxes = boxes.detach().cpu().numpy()
    try:
        data = np.asarray(boxes, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"boxes must be XYXY numbers [N, 4], got {type(boxes).__name__}") from None
    if data.size == 0:
        return data.reshape(0, 4)
    if data.ndim == 1:
        data = data[None]
    if data.ndim != 2 or data.shape[1] != 4:
        raise ValueError(f"boxes has shape {list(np.shape(boxes))}: expected XYXY boxes [N, 4]")
    if not np.isfinite(data).all():
        raise ValueError("boxes hold NaN or infinite values")
    return data


def _check_color(color: Any, name: str) -> np.ndarray:
    try:
        values = [int(c) for c in color]
        ok = len(values) == 3 and all(0 <= c <= 255 and c == v for c, v in zip(values, color))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be three integers (R, G, B) in 0..255, got {color!r}")
    return np.array(values, dtype=np.uint8)


def overlay(
    image: Array,
    saliency: Array,
    *,
    cmap: str | None = None,
    alpha: float = 0.5,
    threshold: float | None = None,
    boxes: Any = None,
    mask: Array | None = None,
    box_color: tuple[int, int, int] = (0, 255, 0),
    outline: str = "border",
    signed: bool = False,
) -> np.ndarray:
    """Blend a colour-mapped saliency map over an image: RGB ``uint8`` ``[H, W, 3]``.

    ``out = (1 - alpha) * image + alpha * 255 * cmap(S)`` (rounded) where the map is shown,
    ``out = image`` elsewhere (the image's own pixels, exactly). Without ``threshold`` the map is
    shown everywhere; with ``threshold = t`` only where ``|S| > 0`` and ``|S| >= t * max |S|``
    (the pipeline's convention: ``t = 0.2``; state it next to the picture). The ground truth is
    drawn last, in ``box_color``: ``boxes`` (see :func:`draw_boxes`; ``outline="outside"``, as
    the demo, the report and :func:`plot_attributions` draw them: a ring just outside the box,
    so that the map's pixels inside it stay visible; ``"border"``, the default kept for existing
    callers: the boxes' own border pixels) and ``mask`` (see :func:`draw_outline`: always just
    outside the region).

    Args:
        image: ``[H, W]``, ``[1, H, W]``, ``[H, W, 1]``, ``[3, H, W]`` or ``[H, W, 3]``; ``uint8``
            or real numbers in [0, 1] (min-max scaled to [0, 1] if outside; see :func:`to_rgb`).
        saliency: ``[H, W]``, the image's size. Unsigned: values in [0, 1] are used as they are;
            a map outside [0, 1] is min-max scaled to [0, 1] first (use :func:`normalize` to
            choose the scaling, e.g. percentile clipping). ``signed=True``: values in [-1, 1]
            as they are, others divided by ``max |S|``; 0 is the colormap's centre.
        cmap: a colormap name (see :func:`colormap`); default ``"viridis"``, or ``"RdBu_r"``
            when ``signed``. ``"jet"`` only on request.
        alpha: the map's weight in [0, 1].
        threshold: ``None`` or a fraction of the map's maximum magnitude in [0, 1].
        boxes: ``None`` or XYXY pixel boxes ``[N, 4]`` (ends exclusive).
        mask: ``None`` or a ground-truth region ``[H, W]`` (non-zero inside).
        outline: ``"border"`` (default) or ``"outside"`` (boxes; prefer it for figures).
        signed: show negative and positive values with a diverging colormap centred at 0.

    Example::

        picture = overlay(images[0], maps[0], threshold=0.2, boxes=boxes[0])   # [H, W, 3] uint8
    """
    heat = _numpy(saliency, "saliency")
    if heat.ndim != 2:
        raise ValueError(f"saliency has shape {list(heat.shape)}: expected one map [H, W]")
    if not np.isfinite(heat).all():
        raise ValueError("saliency holds NaN or infinite values")
    if not isinstance(signed, bool):
        raise TypeError(f"signed must be a bool, got {type(signed).__name__}")
    check_choice(outline, "outline", OUTLINES)
    base = to_rgb(image, size=heat.shape)
    alpha = _check_fraction(alpha, "alpha")
    heat = display_values(heat, signed=signed)
    index = (heat + 1) / 2 if signed else heat
    colours = colormap(_cmap(cmap, signed))[_lut_index(index)]
    blended = _to_uint8((1 - alpha) * base + alpha * 255 * colours)
    if threshold is not None:
        threshold = _check_fraction(threshold, "threshold")
        magnitude = np.abs(heat)
        shown = (magnitude > 0) & (magnitude >= threshold * magnitude.max(initial=0.0))
        blended = np.where(shown[..., None], blended, base)
    if boxes is not None:
        blended = draw_boxes(blended, boxes, color=box_color, outline=outline)
    if mask is not None:
        blended = draw_outline(blended, mask, color=box_color)
    return blended


def display_values(values: np.ndarray, *, signed: bool = False) -> np.ndarray:
    """What a map's colours show: unsigned maps in [0, 1], signed maps in [-1, 1].

    Unsigned: a map in [0, 1] as it is, otherwise min-max scaled. Signed: a map in [-1, 1] as
    it is, otherwise ``S / max |S|`` (an all-zero map stays zero).
    """
    if signed:
        top = np.abs(values).max(initial=0.0)
        return values / top if top > 1 else values
    if values.size and (values.min() < 0 or values.max() > 1):
        return np.asarray(normalize(values), dtype=np.float64)
    return values


def _check_fraction(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1], got {type(value).__name__}")
    if not 0 <= value <= 1:
        raise ValueError(f"{name} must lie in [0, 1], got {value!r}")
    return float(value)


def grid(
    images: Sequence[np.ndarray],
    *,
    ncols: int | None = None,
    pad: int = 2,
    scale: int = 1,
    labels: Sequence[str] | None = None,
    label_height: int = 14,
    fill: int = 255,
) -> np.ndarray:
    """Tile same-sized pictures into one RGB ``uint8`` array, row by row.

    Each picture ``[H, W, 3]`` (or grey ``[H, W]``) is enlarged ``scale`` times (nearest
    neighbour) and placed in a cell, ``ncols`` cells per row (default: at most 5, so that long
    comparisons wrap into rows instead of one strip), ``pad``
    pixels of ``fill`` between and around the cells. With ``labels`` (one per picture; needs
    Pillow) each cell gets a ``label_height``-pixel strip on top holding its label in black.
    Result: ``[rows * (scale H + label) + (rows + 1) pad, ncols * scale W + (ncols + 1) pad, 3]``.

    Example::

        panels = [to_rgb(image)] + [overlay(image, m, threshold=0.2) for m in maps]
        save_png("comparison.png", grid(panels, scale=4, labels=["image", *names]))
    """
    if isinstance(images, np.ndarray) or not isinstance(images, Sequence) or not images:
        raise TypeError("images must be a non-empty list of uint8 arrays [H, W, 3] or [H, W]")
    cells = []
    for i, picture in enumerate(images):
        if not isinstance(picture, np.ndarray) or picture.dtype != np.uint8:
            raise TypeError(f"images[{i}] must be a uint8 numpy array, got {_describe(picture)}")
        if picture.ndim == 2:
            picture = np.repeat(picture[..., None], 3, axis=-1)
        if picture.ndim != 3 or picture.shape[2] != 3:
            raise ValueError(
                f"images[{i}] has shape {list(picture.shape)}: expected [H, W, 3] or [H, W]"
            )
        if cells and picture.shape != cells[0].shape:
            raise ValueError(
                f"images[{i}] has shape {list(picture.shape)} but images[0] has "
                f"{list(cells[0].shape)}: the pictures of a grid must have one size"
            )
        cells.append(picture)
    count = len(cells)
    ncols = min(count, 5) if ncols is None else _check_int(ncols, "ncols", 1)
    pad, scale = _check_int(pad, "pad", 0), _check_int(scale, "scale", 1)
    fill = _check_int(fill, "fill", 0)
    if fill > 255:
        raise ValueError(f"fill must be a grey level in 0..255, got {fill}")
    if labels is not None:
        if isinstance(labels, str) or len(labels) != count:
            raise ValueError(f"labels must be {count} strings, one per picture, got {labels!r}")
        label_height = _check_int(label_height, "label_height", 1)
    strip = label_height if labels is not None else 0
    ncols = min(ncols, count)
    rows = -(-count // ncols)
    height, width = cells[0].shape[0] * scale, cells[0].shape[1] * scale
    out = np.full(
        (rows * (height + strip) + (rows + 1) * pad, ncols * width + (ncols + 1) * pad, 3),
        fill,
        dtype=np.uint8,
    )
    for i, picture in enumerate(cells):
        top = pad + (i // ncols) * (height + strip + pad)
        left = pad + (i % ncols) * (width + pad)
        if labels is not None:
            out[top : top + strip, left : left + width] = _label(str(labels[i]), width, strip, fill)
        big = picture.repeat(scale, axis=0).repeat(scale, axis=1)
        out[top + strip : top + strip + height, left : left + width] = big
    return out


def _label(text: str, width: int, height: int, fill: int) -> np.ndarray:
    """``text`` in black on a ``fill`` strip ``[height, width, 3]`` (Pillow's default font)."""
    image_module, draw_module, font_module = _pillow()
    strip = image_module.new("RGB", (width, height), (fill, fill, fill))
    try:  # Pillow >= 10.1 scales its default font; older versions have one 11 px bitmap font
        font = font_module.load_default(size=max(height - 4, 8))
    except TypeError:
        font = font_module.load_default()
    draw_module.Draw(strip).text((2, 1), text, fill=(0, 0, 0), font=font)
    return np.asarray(strip, dtype=np.uint8)


def _pillow() -> tuple[Any, Any, Any]:
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise ImportError(f"writing PNG files and labels needs Pillow: {INSTALL_HINT}") from None
    return Image, ImageDraw, ImageFont


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _describe(value: Any) -> str:
    dtype = getattr(value, "dtype", None)
    return type(value).__name__ + (f" of dtype {dtype}" if dtype is not None else "")


# Figures and files


def plot_attributions(
    image: Array,
    maps: Mapping[str, Array],
    *,
    cmap: str | None = None,
    alpha: float = 0.5,
    threshold: float | None = None,
    boxes: Any = None,
    mask: Array | None = None,
    box_color: tuple[int, int, int] = (0, 255, 0),
    image_title: str = "image",
    title: str | None = None,
    ncols: int | None = None,
    panel_size: float = 2.5,
    signed: bool = False,
    colorbar: bool = True,
) -> Any:
    """A matplotlib ``Figure``: the image, then one :func:`overlay` per method, with colour bars.

    Panels go row by row, ``ncols`` per row (default: at most 4, so that large comparisons wrap
    instead of shrinking into one strip); one axes per panel (``1 + len(maps)``), without
    ticks, titled with :func:`display_name` of the method. Each map is ``[H, W]`` or
    ``[C, H, W]`` (reduced with ``normalize(map, "abs")``, or summed over the channels when
    ``signed``). With ``colorbar`` every overlay gets a colour bar in the map's own units (the
    range :func:`display_values` scaled from; signed maps symmetric around 0, diverging
    ``"RdBu_r"``), and with ``threshold`` the bar marks it (dashed lines) and a caption below
    the panels states it. ``boxes`` / ``mask`` are outlined on every panel, just outside the
    region (see :func:`overlay`). The figure is made without ``pyplot`` (nothing is shown or
    kept in a global registry): save it with :func:`save_figure` (PNG, SVG or PDF).
    Needs matplotlib (``pip install "torchattr[viz]"``).

    Example::

        fig = plot_attributions(images[0], {"saliency": sal[0], "integrated_gradients": ig[0]},
                                boxes=boxes[0], threshold=0.2)
        save_figure("comparison.pdf", fig)
    """
    figure_class = _matplotlib_figure("plot_attributions")
    if not isinstance(maps, Mapping) or not maps:
        raise TypeError("maps must be a non-empty dict {name: map}")
    size = _check_panel_size(panel_size)
    panels: list[tuple[str, np.ndarray, tuple[float, float, list[float]] | None]] = [
        (image_title, to_rgb(image), None)
    ]
    for name, one_map in maps.items():
        data = _numpy(one_map, f"maps[{name!r}]")
        if data.ndim == 3:
            data = np.asarray(normalize(data, "minmax" if signed else "abs", signed=signed))
        elif data.ndim != 2:
            raise ValueError(
                f"maps[{name!r}] has shape {list(data.shape)}: expected [H, W] or [C, H, W]"
            )
        try:
            picture = overlay(
                image,
                data,
                cmap=cmap,
                alpha=alpha,
                threshold=threshold,
                box_color=box_color,
                signed=signed,
            )
        except ValueError as error:
            raise ValueError(f"maps[{name!r}]: {error}") from None
        panels.append((display_name(str(name)), picture, _scale(data, signed, threshold)))
    if boxes is not None or mask is not None:
        panels = [(n, _ground_truth(p, boxes, mask, box_color), r) for n, p, r in panels]
    return _panel_figure(
        figure_class, panels, cmap, signed, threshold, title, ncols, size, colorbar
    )


def cut_volume(values: np.ndarray, threshold: float) -> np.ndarray:
    """``values`` with every entry of magnitude below ``threshold * max |values|`` set to 0.

    One cut for a whole volume, before it is shown slice by slice, so that a weak voxel is not
    coloured because its own slice is weak (``overlay``'s threshold is per picture).
    """
    threshold = _check_fraction(threshold, "threshold")
    magnitude = np.abs(values)
    return np.where(magnitude >= threshold * magnitude.max(initial=0.0), values, 0.0)


def volume_panels(
    image: Array,
    saliency: Array,
    *,
    at: tuple[int, int, int] | None = None,
    cmap: str | None = None,
    alpha: float = 0.5,
    threshold: float | None = None,
    mask: Array | None = None,
    box_color: tuple[int, int, int] = (0, 255, 0),
    signed: bool = False,
) -> dict[str, np.ndarray]:
    """Orthogonal slices and maximum intensity projections of a volume's map, as overlays.

    ``image`` and ``saliency`` are ``[D, H, W]`` (``image`` may be ``[1, D, H, W]``). Both are
    scaled once for the whole volume (the image min-max to [0, 1], the map by
    :func:`display_values`), so every panel shares one colour scale. Panels (RGB ``uint8``):
    ``"axial z=k"`` ``[H, W]``, ``"coronal y=j"`` ``[D, W]``, ``"sagittal x=i"`` ``[D, H]``
    through the voxel ``at = (k, j, i)`` (default: the map's maximum magnitude), then
    ``"MIP axial"``, ``"MIP coronal"``, ``"MIP sagittal"``: the maximum along each axis of the
    image and of the map (signed maps: the value of largest magnitude). ``mask`` ``[D, H, W]``
    (ground truth) is outlined outside the region on each slice, and its projection on each MIP.
    ``threshold`` is a fraction of the whole volume's maximum magnitude: a voxel below it is not
    coloured on any panel, however weak the rest of its slice.

    Example::

        panels = volume_panels(ct[0], maps[0], threshold=0.2, mask=lesion)
        save_png("mip.png", panels["MIP axial"])
    """
    volume = _numpy(image, "image")
    if volume.ndim == 4 and volume.shape[0] == 1:
        volume = volume[0]
    heat = _numpy(saliency, "saliency")
    if heat.ndim != 3 or volume.shape != heat.shape:
        raise ValueError(
            f"image {list(volume.shape)} and saliency {list(heat.shape)}: expected one volume "
            "[D, H, W] each, of one size"
        )
    if not (np.isfinite(heat).all() and np.isfinite(volume).all()):
        raise ValueError("image or saliency holds NaN or infinite values")
    low, high = volume.min(), volume.max()
    volume = (volume - low) / (high - low) if high > low else np.zeros_like(volume)
    heat = display_values(heat, signed=signed)
    if threshold is not None:  # one cut for the whole volume, not one per panel
        heat = cut_volume(heat, threshold)
        threshold = 0.0  # each panel then shows its non-zero voxels
    region = None if mask is None else _mask(mask)
    if region is not None and region.shape != heat.shape:
        raise ValueError(f"mask has shape {list(region.shape)}: expected {list(heat.shape)}")
    if at is None:
        at = tuple(int(i) for i in np.unravel_index(np.argmax(np.abs(heat)), heat.shape))
    elif len(at) != 3 or not all(0 <= int(a) < n for a, n in zip(at, heat.shape)):
        raise ValueError(f"at must be a voxel (z, y, x) inside {list(heat.shape)}, got {at!r}")
    options = {"cmap": cmap, "alpha": alpha, "threshold": threshold, "signed": signed}
    options["box_color"] = box_color
    panels = {}
    for axis, view in enumerate(("axial", "coronal", "sagittal")):
        cut = [slice(None)] * 3
        cut[axis] = int(at[axis])
        letter = "zyx"[axis]
        part = None if region is None else region[tuple(cut)]
        panels[f"{view} {letter}={at[axis]}"] = overlay(
            volume[tuple(cut)], heat[tuple(cut)], mask=part, **options
        )
    for axis, view in enumerate(("axial", "coronal", "sagittal")):
        projected = np.take_along_axis(
            heat, np.expand_dims(np.abs(heat).argmax(axis=axis), axis), axis
        ).squeeze(axis)
        part = None if region is None else region.any(axis=axis)
        panels[f"MIP {view}"] = overlay(volume.max(axis=axis), projected, mask=part, **options)
    return panels


def plot_volume(
    image: Array,
    saliency: Array,
    *,
    title: str | None = None,
    panel_size: float = 2.5,
    colorbar: bool = True,
    **options: Any,
) -> Any:
    """A matplotlib ``Figure`` of :func:`volume_panels`: three slices, three MIPs, colour bars.

    ``options`` go to :func:`volume_panels` (``at``, ``cmap``, ``alpha``, ``threshold``,
    ``mask``, ``box_color``, ``signed``). Save it with :func:`save_figure`.
    """
    figure_class = _matplotlib_figure("plot_volume")
    size = _check_panel_size(panel_size)
    signed = options.get("signed", False)
    panels = volume_panels(image, saliency, **options)
    span = _scale(_numpy(saliency, "saliency"), bool(signed), options.get("threshold"))
    return _panel_figure(
        figure_class,
        [(name, picture, span) for name, picture in panels.items()],
        options.get("cmap"),
        bool(signed),
        options.get("threshold"),
        title,
        3,
        size,
        colorbar,
    )


def _matplotlib_figure(what: str) -> Any:
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError(f"{what} needs matplotlib: {INSTALL_HINT}") from None
    return Figure


def _check_panel_size(size: Any) -> float:
    if isinstance(size, bool) or not isinstance(size, (int, float)) or not size > 0:
        raise ValueError(f"panel_size must be a positive number of inches, got {size!r}")
    return float(size)


def _scale(
    values: np.ndarray, signed: bool, threshold: float | None
) -> tuple[float, float, list[float]]:
    """A colour bar for a map: the values at its ends and where the threshold lies on it.

    The ends are what :func:`display_values` maps to the colormap's ends (``[0, 1]`` for a map
    in [0, 1], else ``[min, max]``; signed: ``[-1, 1]`` or ``[-max |S|, max |S|]``). The
    threshold levels are the values at which :func:`overlay` starts showing the map:
    ``t * max |S|`` (and its negative when signed), in the map's own units.
    """
    top = float(np.abs(values).max(initial=0.0))
    if signed:
        span = max(top, 1.0)
        levels = [] if threshold is None else [-threshold * top, threshold * top]
        return -span, span, levels
    low, high = float(values.min(initial=0.0)), float(values.max(initial=0.0))
    if low >= 0 and high <= 1:
        levels = [] if threshold is None else [threshold * high]
        return 0.0, 1.0, levels
    levels = [] if threshold is None else [low + threshold * (high - low)]
    return low, high, levels


def _ground_truth(
    picture: np.ndarray, boxes: Any, mask: Array | None, color: tuple[int, int, int]
) -> np.ndarray:
    if boxes is not None:
        picture = draw_boxes(picture, boxes, color=color, outline="outside")
    if mask is not None:
        picture = draw_outline(picture, mask, color=color)
    return picture


def _panel_figure(
    figure_class: Any,
    panels: list[tuple[str, np.ndarray, tuple[float, float, list[float]] | None]],
    cmap: str | None,
    signed: bool,
    threshold: float | None,
    title: str | None,
    ncols: int | None,
    size: float,
    colorbar: bool,
) -> Any:
    """Panels (title, picture, colour bar range or None) in a wrapping grid of one figure."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize

    count = len(panels)
    ncols = min(count, 4) if ncols is None else min(_check_int(ncols, "ncols", 1), count)
    rows = -(-count // ncols)
    width = size * ncols * (1.25 if colorbar else 1.0)
    extra = (0.4 if title else 0) + (0.35 if threshold is not None else 0)
    figure = figure_class(figsize=(width, size * rows + extra), layout="constrained")
    colours = ListedColormap(colormap(_cmap(cmap, signed)))
    for i, (name, picture, span) in enumerate(panels):
        axes = figure.add_subplot(rows, ncols, i + 1)
        axes.imshow(picture, interpolation="nearest")
        axes.set_title(name, fontsize=10)
        axes.set_axis_off()
        if colorbar and span is not None:
            low, high, levels = span
            bar = figure.colorbar(
                ScalarMappable(Normalize(low, high), colours), ax=axes, fraction=0.046, pad=0.03
            )
            bar.ax.tick_params(labelsize=7)
            for level in levels:
                bar.ax.axhline(level, color="black", linestyle="--", linewidth=0.8)
    if threshold is not None:
        what = "|map|" if signed else "map"
        figure.supxlabel(
            f"Colours shown where {what} ≥ {100 * threshold:g} % of its maximum (dashed on the "
            "colour bars); ground truth outlined just outside the region.",
            fontsize=8,
        )
    if title:
        figure.suptitle(title)
    return figure


def save_figure(path: PathLike, figure: Any, *, dpi: float | None = None) -> Path:
    """Write a matplotlib figure as PNG, SVG or PDF (from the suffix), atomically.

    SVG and PDF are vector output (text stays text; pictures are embedded at their own
    resolution); PNG is rendered at ``dpi`` (default: the figure's). Missing parent folders are
    created. Returns the final path.

    Example::

        save_figure("figures/comparison.pdf", plot_attributions(image, maps))
        save_figure("figures/comparison.png", fig, dpi=300)
    """
    target = Path(path)
    kind = target.suffix.lower().lstrip(".")
    if kind not in ("png", "svg", "pdf"):
        raise ValueError(f"path {str(path)!r}: expected a .png, .svg or .pdf file name")
    if not hasattr(figure, "savefig"):
        raise TypeError(f"figure must be a matplotlib Figure, got {type(figure).__name__}")
    if dpi is not None and (isinstance(dpi, bool) or not isinstance(dpi, (int, float)) or dpi <= 0):
        raise ValueError(f"dpi must be a positive number, got {dpi!r}")
    options: dict[str, Any] = {"format": kind}
    if dpi is not None:
        options["dpi"] = dpi
    return write_atomic(target, lambda handle: figure.savefig(handle, **options))


def save_png(path: PathLike, image: Any, *, dpi: float | None = None) -> Path:
    """Write a picture or a matplotlib figure as a PNG file, atomically; return the final path.

    ``image``: a ``uint8`` array (or tensor) ``[H, W]`` (grey), ``[H, W, 3]`` (RGB) or
    ``[H, W, 4]`` (RGBA), written with Pillow; or a matplotlib ``Figure`` (anything with
    ``savefig``), written with ``savefig(format="png", dpi=dpi)``. The data go to a temporary
    file in the destination folder, which then replaces ``path`` (``os.replace``); missing parent
    folders are created and a ``.png`` suffix is appended when missing.

    Example::

        save_png("overlays/img_0007.png", overlay(image, saliency, threshold=0.2))
    """
    target = Path(path)
    if target.suffix.lower() != ".png":
        target = target.with_name(target.name + ".png")
    if hasattr(image, "savefig"):
        options: dict[str, Any] = {"format": "png"}
        if dpi is not None:
            options["dpi"] = dpi
        return write_atomic(target, lambda handle: image.savefig(handle, **options))
    if isinstance(image, Tensor):
        if image.dtype != torch.uint8:
            raise TypeError(f"image must be a uint8 array or a Figure, got {_describe(image)}")
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise TypeError(f"image must be a uint8 array or a Figure, got {_describe(image)}")
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4))):
        raise ValueError(
            f"image has shape {list(image.shape)}: expected [H, W], [H, W, 3] or [H, W, 4]"
        )
    pil_image = _pillow()[0].fromarray(np.ascontiguousarray(image))
    return write_atomic(target, lambda handle: pil_image.save(handle, format="PNG"))
