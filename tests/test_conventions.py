"""Call conventions: one signature shape, one name per concept, Captum's names caught, model
outputs as pytrees, and the small input checks of issue 12."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import torchattr as ta
from torchattr import metrics


def small():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(48, 4))
    return model.double().eval(), torch.rand(3, 2, 4, 4, dtype=torch.float64)


GRADIENT_METHODS = {
    "saliency": lambda m, x, *a, **kw: ta.saliency(m, x, *a, **kw),
    "input_x_gradient": lambda m, x, *a, **kw: ta.input_x_gradient(m, x, *a, **kw),
    "smoothgrad": lambda m, x, *a, **kw: ta.smoothgrad(m, x, *a, samples=2, **kw),
    "integrated_gradients": lambda m, x, *a, **kw: ta.integrated_gradients(m, x, *a, steps=3, **kw),
    "cam": lambda m, x, *a, **kw: ta.cam(m, x, *a, layer=m[0], **kw),
}


# ------------------------------------------------------------------------------------------
# One signature shape: (model, inputs, target=None, *, ...)
# ------------------------------------------------------------------------------------------


def test_positional_target_of_integrated_gradients_is_the_target():
    model, x = small()
    labels = torch.tensor([3, 0, 1])
    assert not torch.equal(labels, model(x).argmax(1))  # so that None would differ
    positional = ta.integrated_gradients(model, x, labels, steps=4)
    keyword = ta.integrated_gradients(model, x, target=labels, steps=4)
    torch.testing.assert_close(positional, keyword, rtol=0, atol=0)
    assert not torch.allclose(positional, ta.integrated_gradients(model, x, steps=4))


@pytest.mark.parametrize("baseline", [torch.zeros(3, 2, 4, 4, dtype=torch.float64), 0.5])
def test_old_positional_baseline_is_refused(baseline):
    model, x = small()
    with pytest.raises(TypeError, match="baseline is keyword-only"):
        ta.integrated_gradients(model, x, baseline)


@pytest.mark.parametrize(
    ("call", "key", "suggestion"),
    [
        (ta.integrated_gradients, "n_steps", "steps"),
        (ta.integrated_gradients, "baselines", "baseline"),
        (ta.integrated_gradients, "internal_batch_size", "chunk_size"),
        (ta.integrated_gradients, "additional_forward_args", "forward_kwargs"),
        (ta.integrated_gradients, "return_convergence_delta", "return_delta"),
        (ta.smoothgrad, "nt_samples", "samples"),
        (ta.smoothgrad, "stdevs", "sigma"),
        (ta.smoothgrad, "nt_type", "kind"),
        (ta.saliency, "targte", "target"),
        (ta.input_x_gradient, "targets", "target"),
        (ta.cam, "internal_batch_size", "chunk_size"),
        (metrics.road, "internal_batch_size", "chunk_size"),
    ],
)
def test_captum_names_and_typos_get_did_you_mean(call, key, suggestion):
    model, x = small()
    with pytest.raises(
        TypeError,
        match=rf"unexpected keyword argument '{key}'; did you mean "
        rf"'{suggestion}'\?",
    ):
        call(model, x, **{key: 1})


def test_unknown_keyword_without_a_near_name_lists_the_keywords():
    model, x = small()
    with pytest.raises(TypeError, match=r"'zzz' \(keywords: target, abs, reduce"):
        ta.saliency(model, x, zzz=1)


def test_deprecated_names_still_work_and_warn():
    model, x = small()
    maps = torch.rand(3, 4, 4, dtype=torch.float64)
    with pytest.warns(DeprecationWarning, match="'batch_size' is deprecated.*use 'chunk_size'"):
        old = ta.cam(model, x, 1, layer=model[0], method="scorecam", batch_size=2)
    new = ta.cam(model, x, 1, layer=model[0], method="scorecam", chunk_size=2)
    torch.testing.assert_close(old, new, rtol=0, atol=0)
    road = functools.partial(metrics.road, model, x, maps, 1, fractions=(0.5,))
    with pytest.warns(DeprecationWarning) as record:
        old = road(noise=0.05, batch_size=2, generator=torch.Generator().manual_seed(0))
    messages = " ".join(str(w.message) for w in record)
    assert "'noise' is deprecated" in messages and "'batch_size' is deprecated" in messages
    new = road(sigma=0.05, chunk_size=2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(old, new, rtol=0, atol=0)
    with pytest.raises(TypeError, match="got both 'batch_size' and 'chunk_size'"):
        ta.cam(model, x, layer=model[0], batch_size=2, chunk_size=2)


def test_smoothgrad_sigma_is_an_absolute_standard_deviation():
    """``noise`` is a fraction of the value range, ``sigma`` a standard deviation (as in the
    metrics); the deprecated absolute_noise=True is sigma=noise."""
    model, x = small()
    run = functools.partial(ta.smoothgrad, model, x, 1, samples=3)
    by_sigma = run(sigma=0.2, generator=torch.Generator().manual_seed(0))
    with pytest.warns(DeprecationWarning, match="absolute_noise is deprecated"):
        old = run(noise=0.2, absolute_noise=True, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(by_sigma, old, rtol=0, atol=0)
    spread = (x.flatten(1).amax(1) - x.flatten(1).amin(1))[0].item()
    relative = run(noise=0.2 / spread, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(relative[0], by_sigma[0], rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------------------------
# Model outputs: dicts, ModelOutput-like, tuples; callable targets on any pytree
# ------------------------------------------------------------------------------------------


class WithLoss(nn.Module):
    """PyHealth-style: returns {"loss": 0-d, "logit": [B, 4]}."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        logit = self.model(x)
        return {"loss": logit.square().mean(), "logit": logit}


@pytest.mark.parametrize(
    "method",
    [
        lambda m, x, t: ta.saliency(m, x, t, abs=False, reduce=None),
        lambda m, x, t: ta.integrated_gradients(m, x, t, steps=5, chunk_size=4),
        lambda m, x, t: ta.smoothgrad(
            m, x, t, samples=3, chunk_size=5, generator=torch.Generator().manual_seed(0)
        ),
    ],
    ids=["saliency", "ig", "smoothgrad"],
)
def test_callable_target_on_dict_output_with_scalar_loss(method):
    model, x = small()
    plain = method(model, x, 2)
    # a callable target acts row by row on enlarged batches (README, Conventions)
    wrapped = method(WithLoss(model).eval(), x, lambda out: out["logit"][:, 2])
    torch.testing.assert_close(wrapped, plain, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda m: lambda x: {"loss": m(x).sum(), "logits": m(x)},
        lambda m: lambda x: (m(x), m(x).sum()),
    ],
    ids=["dict-logits", "tuple"],
)
@pytest.mark.parametrize("name", ["saliency", "input_x_gradient", "integrated_gradients"])
def test_index_targets_select_logits_of_dict_and_tuple_outputs(wrap, name):
    model, x = small()
    method = GRADIENT_METHODS[name]
    for target in (None, torch.tensor([1, 2, 0]), torch.tensor([[0, 1]] * 3)):
        torch.testing.assert_close(
            method(wrap(model), x, target), method(model, x, target), rtol=1e-12, atol=1e-14
        )


def test_multi_class_callable_target_with_quadrature_weights():
    """A callable returning [N, K] goes through IG's weighted rows like a [B, K] index target."""
    model, x = small()
    by_index = ta.integrated_gradients(model, x, torch.tensor([[0, 3]] * 3), steps=4, chunk_size=5)
    by_callable = ta.integrated_gradients(
        WithLoss(model).eval(), x, lambda out: out["logit"][:, [0, 3]], steps=4, chunk_size=5
    )
    torch.testing.assert_close(by_callable, by_index, rtol=1e-10, atol=1e-12)


def test_training_mode_dict_output_through_autograd():
    model, x = small()
    wrapped = WithLoss(nn.Sequential(model, nn.Dropout(0.0))).train()
    with pytest.warns(UserWarning, match="training mode"):
        got = ta.saliency(wrapped, x, lambda out: out["logit"][:, 1])
    torch.testing.assert_close(got, ta.saliency(model, x, 1))


# ------------------------------------------------------------------------------------------
# Small items
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(GRADIENT_METHODS))
def test_empty_batch_is_refused(name):
    model, x = small()
    with pytest.raises(ValueError, match="batch size 0"):
        GRADIENT_METHODS[name](model, x[:0])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_non_finite_noise_is_refused(value):
    model, x = small()
    with pytest.raises(ValueError, match="noise must be a finite number >= 0"):
        ta.smoothgrad(model, x, noise=value)
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        ta.smoothgrad(model, x, sigma=value)
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        metrics.road(model, x, torch.rand(3, 4, 4, dtype=torch.float64), sigma=value)
    mask = torch.zeros(3, 4, 4, dtype=torch.bool)
    mask[:, 0, 0] = True
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        metrics.noisy_linear_impute(x, mask, sigma=value)
    with pytest.raises(ValueError, match="sigma must be a finite number >= 0"):
        metrics.infidelity(model, x, x, sigma=value)


@pytest.mark.parametrize("name", sorted(GRADIENT_METHODS))
def test_complex_inputs_are_refused(name):
    model, x = small()
    with pytest.raises(TypeError, match="real floating-point"):
        GRADIENT_METHODS[name](model, x.to(torch.complex128))


@pytest.mark.parametrize("name", sorted(GRADIENT_METHODS))
def test_numpy_integer_targets_are_accepted(name):
    model, x = small()
    method = GRADIENT_METHODS[name]
    kw = {"generator": torch.Generator().manual_seed(0)} if name == "smoothgrad" else {}
    one = method(model, x, torch.tensor(2), **kw)
    if kw:
        kw = {"generator": torch.Generator().manual_seed(0)}
    torch.testing.assert_close(method(model, x, np.int64(2), **kw), one, rtol=0, atol=0)
    per_sample = np.array([2, 0, 1])
    if kw:
        kw = {"generator": torch.Generator().manual_seed(0)}
    expected = method(model, x, torch.tensor([2, 0, 1]), **kw)
    if kw:
        kw = {"generator": torch.Generator().manual_seed(0)}
    torch.testing.assert_close(method(model, x, per_sample, **kw), expected, rtol=0, atol=0)
    with pytest.raises(TypeError, match="integer class indices"):
        method(model, x, np.array([0.5, 1.0, 2.0]))


@pytest.mark.parametrize("name", sorted(GRADIENT_METHODS))
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_results_are_detached(name, train):
    model, x = small()
    model.train(train)
    x = x.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = GRADIENT_METHODS[name](model, x, 1)
        ig, delta = ta.integrated_gradients(model, x, 1, steps=2, return_delta=True)
    assert not out.requires_grad and not ig.requires_grad and not delta.requires_grad


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "name", ["saliency", "input_x_gradient", "smoothgrad", "integrated_gradients"]
)
def test_low_precision_inputs_give_float32(name, dtype):
    model, x = small()
    out = GRADIENT_METHODS[name](model.to(dtype), x.to(dtype), 1)
    assert out.dtype == torch.float32


@pytest.mark.parametrize("n", [1, 2, 3, 10, 50, 257, 1000])
def test_gauss_legendre_matches_numpy(n):
    nodes, weights = ta.quadrature("gausslegendre", n)
    t, v = np.polynomial.legendre.leggauss(n)
    np.testing.assert_allclose(nodes.numpy(), (1 + t) / 2, rtol=0, atol=1e-12)
    np.testing.assert_allclose(weights.numpy(), v / 2, rtol=0, atol=1e-12)
    assert abs(weights.sum().item() - 1) < 1e-12


def test_subpackages_are_lazy_attributes():
    code = (
        "import sys, torchattr as ta\n"
        "lazy = ['metrics', 'viz', 'io', 'data', 'cli']\n"
        "assert not [m for m in lazy if 'torchattr.' + m in sys.modules], sys.modules.keys()\n"
        "assert ta.metrics.road is not None and ta.viz.overlay is not None\n"
        "assert ta.io.load_maps is not None and ta.data is not None\n"
        "assert set(lazy) <= set(dir(ta))\n"
        "try:\n    ta.nothing\nexcept AttributeError as e:\n    assert 'nothing' in str(e)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])


def test_training_mode_is_seen_through_plain_functions():
    model, x = small()
    net = nn.Sequential(model, nn.Dropout(0.0)).train()
    glue = [
        lambda **kw: net(kw["x"]),
        functools.partial(lambda m, **kw: m(kw["x"]), net),
        WithLoss(net).forward,
    ]
    for fn in glue:
        wanted = (lambda f: lambda **kw: f(**kw)["logit"][:, 0]) if fn is glue[2] else None
        call = (lambda f: lambda x: f(x)["logit"])(fn) if wanted else fn
        inputs = x if wanted else {"x": x}
        with pytest.warns(UserWarning, match="training mode"):
            ta.saliency(call, inputs, 0)
    with pytest.warns(UserWarning, match="training mode") as record:
        ta.saliency(glue[0], {"x": x}, 0)
    assert record[0].filename == __file__  # the warning points at the user's line
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ta.saliency(glue[0], {"x": x}, 0)


WRONG = """
import torch
from torch import Tensor
import torchattr as ta

model = torch.nn.Linear(4, 2)
x = torch.rand(3, 4)
a: dict[str, Tensor] = ta.saliency(model, x)
b: Tensor = ta.integrated_gradients(model, x, return_delta=True)
c: Tensor = ta.cam(model, x, layer=model, return_raw=True)
"""


@pytest.mark.skipif(
    os.environ.get("TORCHATTR_TYPECHECK") != "1",
    reason="mypy on torch takes about a minute cold: run with TORCHATTR_TYPECHECK=1",
)
def test_public_api_types(tmp_path):
    """Tensor in -> Tensor out (tuple -> tuple, dict -> dict) for mypy; wrong annotations fail."""
    pytest.importorskip("mypy")
    root = Path(__file__).parents[1]
    wrong = tmp_path / "wrong.py"
    wrong.write_text(WRONG)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--ignore-missing-imports",
            "--follow-imports=silent",
            "--no-incremental",
            str(root / "tests" / "typing" / "check_overloads.py"),
            str(wrong),
        ],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert "check_overloads.py" not in result.stdout, result.stdout
    assert result.stdout.count("wrong.py:") == 3, result.stdout
