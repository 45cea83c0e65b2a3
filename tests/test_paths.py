"""Path methods: Expected Gradients (Captum's GradientShap and a loop reference), Blur IG and
Guided IG (float64 loop references, endpoints, completeness), IDGI (its closed form)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from captum.attr import GradientShap
from model_state import assert_unchanged, snapshot
from models import ImageAndTabular, SmoothMLP, build

import torchattr as ta
import torchattr.paths.expected as expected_module
from torchattr._core.grad import prepare
from torchattr._core.paths import blur_path, gaussian_blur, guided_path, idgi_correction

TARGETS = torch.tensor([0, 2, 1])


def close(actual, expected, rtol=1e-7, atol=1e-10):
    torch.testing.assert_close(actual, expected.to(actual.dtype), rtol=rtol, atol=atol)


def grad_of(model, x, target):
    """d output[target] / d x for one sample x (no batch dimension), plain autograd, float64."""
    x = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(x.unsqueeze(0))[0, target], x)
    return g


def score(model, x, target):
    with torch.no_grad():
        return model(x.unsqueeze(0))[0, target].item()


def small_cnn():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1),
        torch.nn.Tanh(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 3),
    )
    x = torch.rand(3, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    return model.double().eval(), x


# --------------------------------------------------------------------------------------------
# Expected Gradients
# --------------------------------------------------------------------------------------------


def test_expected_gradients_equals_captum_gradient_shap(monkeypatch):
    """Captum draws reference indices (np.random.choice) and alphas (np.random.uniform) for
    sample-major rows b * n + j; given the same draws the two estimators agree to rounding."""
    model, x = build("conv_bn")
    refs = torch.rand(
        4, *x.shape[1:], dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    n, drawn = 5, {}
    choice, uniform = np.random.choice, np.random.uniform

    def record(name, fn):
        def wrapped(*args, **kwargs):
            drawn[name] = np.asarray(fn(*args, **kwargs))
            return drawn[name]

        return wrapped

    monkeypatch.setattr(np.random, "choice", record("choice", choice))
    monkeypatch.setattr(np.random, "uniform", record("uniform", uniform))
    np.random.seed(0)
    theirs = GradientShap(model).attribute(x, baselines=refs, target=TARGETS, n_samples=n)
    index = torch.as_tensor(drawn["choice"]).reshape(3, n).T
    alphas = torch.as_tensor(drawn["uniform"], dtype=torch.float64).reshape(3, n).T
    monkeypatch.setattr(expected_module, "draw_references", lambda *a, **k: (index, alphas))
    ours = ta.expected_gradients(model, x, TARGETS, references=refs, samples=n, chunk_size=4)
    close(ours, theirs, rtol=1e-9, atol=1e-12)


def test_expected_gradients_loop_reference_multi_target_and_delta():
    model, x = small_cnn()
    refs = torch.rand(6, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    n = 7
    index, alphas = expected_module.draw_references(
        6, n, 3, torch.Generator().manual_seed(5), x.device
    )
    targets = torch.tensor([[0, 1], [2, 0], [1, 1]])
    ours, delta = ta.expected_gradients(
        model,
        x,
        targets,
        references=refs,
        samples=n,
        generator=torch.Generator().manual_seed(5),
        chunk_size=5,
        return_delta=True,
    )
    assert ours.shape == (3, 2, 2, 6, 6) and delta.shape == (3, 2)
    for b in range(3):
        for k in range(2):
            t = targets[b, k].item()
            expected = torch.zeros_like(x[b])
            start_scores = 0.0
            for j in range(n):
                r = refs[index[j, b]]
                a = alphas[j, b].item()
                expected += (x[b] - r) * grad_of(model, r + a * (x[b] - r), t) / n
                start_scores += score(model, r, t) / n
            close(ours[b, k], expected)
            want = expected.sum() - (score(model, x[b], t) - start_scores)
            assert abs(delta[b, k].item() - want.item()) < 1e-10


def test_expected_gradients_tuple_inputs_seeded_and_untouched():
    torch.manual_seed(0)
    model = ImageAndTabular().double().eval()
    image, labs = (
        torch.randn(2, 1, 8, 8, dtype=torch.float64),
        torch.randn(2, 4, dtype=torch.float64),
    )
    refs = (torch.randn(3, 1, 8, 8, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64))
    before = snapshot(model)
    run = lambda chunk: ta.expected_gradients(  # noqa: E731
        model,
        (image, labs),
        1,
        references=refs,
        samples=6,
        generator=torch.Generator().manual_seed(0),
        chunk_size=chunk,
    )
    a, b = run(None), run(5)
    assert_unchanged(model, before)
    assert a[0].shape == image.shape and a[1].shape == labs.shape
    close(a[0], b[0], rtol=1e-10)
    close(a[1], b[1], rtol=1e-10)
    as_dict = ta.expected_gradients(
        model,
        {"image": image, "labs": labs},
        1,
        samples=6,
        chunk_size=5,
        references={"image": refs[0], "labs": refs[1]},
        generator=torch.Generator().manual_seed(0),
    )
    close(as_dict["labs"], b[1], rtol=1e-10)


def test_expected_gradients_refusals():
    model, x = small_cnn()
    with pytest.raises(ValueError, match="references for inputs has shape"):
        ta.expected_gradients(model, x, references=torch.zeros(4, 2, 5, 6, dtype=torch.float64))
    with pytest.raises(TypeError, match="floating-point"):
        ta.expected_gradients(model, x, references=torch.zeros(4, 2, 6, 6, dtype=torch.long))
    with pytest.raises(ValueError, match="layer="):
        ta.expected_gradients(model, x, references=x, layer=model[0])
    with pytest.raises(TypeError, match="did you mean 'samples'"):
        ta.expected_gradients(model, x, references=x, n_samples=3)
    refs = x.clone()
    refs[0, 0, 0, 0] = math.nan
    with pytest.raises(ValueError, match="NaN"):
        ta.expected_gradients(model, x, references=refs)


# --------------------------------------------------------------------------------------------
# Blur IG
# --------------------------------------------------------------------------------------------


def blur_reference(x, sigma, mode="symmetric"):
    """scipy.ndimage.gaussian_filter (truncate 4) over the last two axes, by numpy padding and
    an explicit sum over the kernel: numpy's "symmetric" is scipy's 'reflect', numpy's
    "constant" (zeros) scipy's 'constant' (Blur IG's path, as the authors' reference)."""
    if sigma == 0:
        return x.clone()
    r = int(4 * sigma + 0.5)
    w = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma * sigma))
    w /= w.sum()
    out = x.numpy()
    for axis in (-2, -1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode=mode)
        size = out.shape[axis]
        out = sum(w[j] * np.take(padded, range(j, j + size), axis=axis) for j in range(2 * r + 1))
    return torch.from_numpy(out)


@pytest.mark.parametrize("sigma", [0.0, 0.7, 2.5, 9.0])
@pytest.mark.parametrize("mode", ["reflect", "constant"])
def test_gaussian_blur_matches_scipy_style_filter(sigma, mode):
    x = torch.rand(2, 3, 5, 7, dtype=torch.float64)
    want = blur_reference(x, sigma, "symmetric" if mode == "reflect" else "constant")
    close(gaussian_blur(x, sigma, mode=mode), want, rtol=1e-12, atol=1e-13)


def test_blur_ig_path_starts_near_black_as_the_reference():
    """Zero outside the image (the authors' gaussian_filter(mode="constant")): a strong blur
    fades the image towards 0, it does not converge to the image's mean."""
    x = torch.rand(1, 3, 32, 32, dtype=torch.float64)
    start = blur_path([x], 50.0)(0, [0.0], slice(None))[0]
    assert start.abs().max() < 0.1 * x.mean()


def test_blur_ig_loop_reference_endpoints_and_completeness():
    model, x = small_cnn()
    steps, max_sigma = 6, 3.0
    ours, delta = ta.blur_integrated_gradients(
        model, x, TARGETS, max_sigma=max_sigma, steps=steps, chunk_size=4, return_delta=True
    )

    def path(xb, a):
        sigma = max_sigma * math.sqrt(1 - a)
        return blur_reference(xb.unsqueeze(0), sigma, "constant")[0]

    for b in range(3):
        t = TARGETS[b].item()
        expected = torch.zeros_like(x[b])
        for k in range(steps):
            lo, hi, mid = k / steps, (k + 1) / steps, (k + 0.5) / steps
            expected += grad_of(model, path(x[b], mid), t) * (path(x[b], hi) - path(x[b], lo))
        close(ours[b], expected, rtol=1e-9)
        close(path(x[b], 1.0), x[b])  # the path ends at the input
        start = score(model, path(x[b], 0.0), t)
        want = expected.sum() - (score(model, x[b], t) - start)
        assert abs(delta[b].item() - want.item()) < 1e-10
    # completeness: the midpoint rule's error falls like 1/n^2
    _, fine = ta.blur_integrated_gradients(
        model, x, TARGETS, max_sigma=max_sigma, steps=4 * steps, return_delta=True
    )
    assert (fine.abs() < delta.abs() / 8).all()


def test_blur_ig_multi_target_and_refusals():
    model, x = small_cnn()
    both = ta.blur_integrated_gradients(model, x, torch.tensor([[0, 1]] * 3), max_sigma=2, steps=4)
    one = ta.blur_integrated_gradients(model, x, 1, max_sigma=2, steps=4)
    close(both[:, 1], one, rtol=1e-10)
    mlp = SmoothMLP().double().eval()
    with pytest.raises(ValueError, match="two spatial dimensions"):
        ta.blur_integrated_gradients(mlp, torch.rand(2, 10, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):  # channels would be mixed
        ta.blur_integrated_gradients(mlp, torch.rand(2, 2, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="max_sigma must be > 0"):
        ta.blur_integrated_gradients(model, x, max_sigma=0)


# --------------------------------------------------------------------------------------------
# Guided IG
# --------------------------------------------------------------------------------------------


def guided_reference(grad_fn, x, base, steps, fraction, max_dist):
    """Guided IG for one sample, a plain numpy transcription of the published algorithm."""
    x, base = x.numpy().ravel(), base.numpy().ravel()
    state, attr = base.copy(), np.zeros_like(x)
    total = np.abs(x - base).sum()
    for step in range(steps):
        g_actual = grad_fn(state)
        alpha = (step + 1) / steps
        lo, hi = max(alpha - max_dist, 0.0), min(alpha + max_dist, 1.0)
        x_lo, x_hi = base + lo * (x - base), base + hi * (x - base)
        if hi == 1.0:
            x_hi = x.copy()
        goal = total * (1 - alpha)
        gamma = np.inf
        while gamma > 1:
            old = state.copy()
            with np.errstate(divide="ignore", invalid="ignore"):
                pos = np.where(x - base != 0, (state - base) / (x - base), hi)
            state[pos < lo] = x_lo[pos < lo]
            dist = np.abs(state - x).sum()
            if dist <= goal + 1e-9 * max(total, 1.0):
                attr += (state - old) * g_actual
                break
            g = np.abs(g_actual)
            g[state == x_hi] = np.inf
            threshold = np.quantile(g, fraction, method="lower")
            chosen = (g <= threshold) & (g != np.inf)
            room = (np.abs(state - x_hi) * chosen).sum()
            gamma = (dist - goal) / room if room > 0 else np.inf
            if gamma > 1:
                state[chosen] = x_hi[chosen]
            else:
                state[chosen] = (state + gamma * (x_hi - state))[chosen]
            attr += (state - old) * g_actual
            if room == 0:
                break
        if step == steps - 1:
            attr += (x - state) * g_actual
            state = x.copy()
    return attr, state


def test_guided_ig_matches_per_sample_reference_and_ends_at_input():
    model = SmoothMLP().double().eval()
    x = torch.randn(3, 10, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    base = torch.full_like(x, 0.1)
    steps, fraction, max_dist = 12, 0.25, 0.05
    ours, delta = ta.guided_integrated_gradients(
        model,
        x,
        TARGETS,
        baseline=base,
        steps=steps,
        fraction=fraction,
        max_dist=max_dist,
        return_delta=True,
        chunk_size=2,
    )
    for b in range(3):
        t = TARGETS[b].item()

        def grad_fn(flat, t=t):
            return grad_of(model, torch.from_numpy(flat.copy()), t).numpy()

        attr, end = guided_reference(grad_fn, x[b], base[b], steps, fraction, max_dist)
        close(ours[b], torch.from_numpy(attr), rtol=1e-9)
        close(torch.from_numpy(end), x[b])
    # completeness: the path runs from the baseline to the input, so sum(A) -> s(x) - s(x')
    _, fine = ta.guided_integrated_gradients(
        model, x, TARGETS, baseline=base, steps=256, return_delta=True
    )
    assert (fine.abs() < 2e-3).all() and (fine.abs() < delta.abs()).all()


def test_guided_path_endpoints_from_the_engine():
    model, x = small_cnn()
    problem, _ = prepare(model, x, TARGETS)
    base = torch.rand_like(x)
    for steps in (1, 3, 10):
        attribution, end = guided_path(
            problem,
            TARGETS,
            [base],
            [x],
            steps=steps,
            fraction=0.25,
            max_dist=0.02,
            idgi=False,
            chunk_size=None,
        )
        assert torch.equal(end[0], x)  # ends exactly at the input
        assert attribution[0].shape == x.shape


def test_guided_ig_embedding_layer_mask_and_kwargs():
    torch.manual_seed(0)

    class Tokens(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.Embedding(20, 4, padding_idx=0)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, ids, scale):
            return self.head(torch.tanh(self.embedding(ids)).mean(1)) * scale[:, None]

    model = Tokens().double().eval()
    ids = torch.tensor([[3, 5, 7, 0], [9, 2, 0, 0]])
    scale = torch.tensor([1.0, 2.0], dtype=torch.float64)
    scores, delta = ta.guided_integrated_gradients(
        model,
        ids,
        1,
        layer=model.embedding,
        mask=0,
        baseline=0,
        steps=64,
        forward_kwargs={"scale": scale},
        return_delta=True,
    )
    assert scores.shape == (2, 4)
    assert torch.all(scores[ids == 0] == 0)
    assert delta.abs().max() < 5e-3
    corrected, exact = ta.idgi(
        model,
        ids,
        1,
        method="guided",
        layer=model.embedding,
        mask=0,
        baseline=0,
        steps=16,
        forward_kwargs={"scale": scale},
        return_delta=True,
    )
    assert torch.all(corrected[ids == 0] == 0) and exact.abs().max() < 1e-12
    straight, exact = ta.idgi(
        model,
        ids,
        1,
        layer=model.embedding,
        mask=0,
        baseline=0,
        steps=8,
        forward_kwargs={"scale": scale},
        return_delta=True,
        chunk_size=3,
    )
    assert torch.all(straight[ids == 0] == 0) and exact.abs().max() < 1e-12


def test_guided_ig_multi_target_is_per_class():
    model, x = small_cnn()
    both = ta.guided_integrated_gradients(model, x, torch.tensor([[0, 2]] * 3), steps=5)
    one = ta.guided_integrated_gradients(model, x, 2, steps=5)
    assert both.shape == (3, 2, 2, 6, 6)
    close(both[:, 1], one, rtol=1e-12)
    with pytest.raises(ValueError, match="fraction must be in"):
        ta.guided_integrated_gradients(model, x, fraction=0)


# --------------------------------------------------------------------------------------------
# IDGI
# --------------------------------------------------------------------------------------------


class Quadratic(torch.nn.Module):
    """s_c(x) = sum_i w_ci x_i^2 + v_c . x: gradient 2 w_c * x + v_c, known in closed form."""

    def __init__(self, w, v):
        super().__init__()
        self.w, self.v = torch.nn.Parameter(w), torch.nn.Parameter(v)

    def forward(self, x):
        return (x * x) @ self.w.T + x @ self.v.T


def test_idgi_closed_form_on_a_model_with_known_gradients():
    gen = torch.Generator().manual_seed(0)
    w, v = (
        torch.randn(2, 5, dtype=torch.float64, generator=gen),
        torch.randn(2, 5, dtype=torch.float64, generator=gen),
    )
    model = Quadratic(w, v).eval()
    x = torch.randn(3, 5, dtype=torch.float64, generator=gen)
    base = torch.randn(1, 5, dtype=torch.float64, generator=gen)
    targets = torch.tensor([[0, 1], [1, 0], [1, 1]])
    steps = 7
    ours, delta = ta.idgi(
        model, x, targets, baseline=base, steps=steps, chunk_size=4, return_delta=True
    )
    for b in range(3):
        for k in range(2):
            c = targets[b, k]

            def f(p, c=c):
                return ((p * p) * w[c]).sum() + (p * v[c]).sum()

            def point(a, b=b):
                return base[0] + a * (x[b] - base[0])

            expected = torch.zeros(5, dtype=torch.float64)
            for s in range(steps):
                g = 2 * w[c] * point(s / steps) + v[c]  # at the left knot (Yang et al.)
                change = f(point((s + 1) / steps)) - f(point(s / steps))
                expected += g * g / (g * g).sum() * change
            close(ours[b, k], expected, rtol=1e-10)
            # each segment credits its score change: completeness is exact for any steps
            assert abs(ours[b, k].sum().item() - (f(x[b]) - f(base[0])).item()) < 1e-12
    assert delta.abs().max() < 1e-12


def test_idgi_on_blur_is_complete_and_matches_ig_shape():
    model, x = small_cnn()
    corrected, delta = ta.idgi(
        model, x, TARGETS, method="blur", max_sigma=2.0, steps=5, return_delta=True
    )
    assert corrected.shape == x.shape and delta.abs().max() < 1e-12
    with pytest.raises(ValueError, match="max_sigma is an option of method='blur'"):
        ta.idgi(model, x, method="ig", max_sigma=3.0)
    with pytest.raises(ValueError, match="unknown method"):
        ta.idgi(model, x, method="straight")


# --------------------------------------------------------------------------------------------
# Every path method: grad contexts, model state, threads, chunking
# --------------------------------------------------------------------------------------------

CNN, IMAGES = build("conv_bn")
REFS = torch.rand(
    4, *IMAGES.shape[1:], dtype=torch.float64, generator=torch.Generator().manual_seed(9)
)
CALLS = {
    "expected": lambda x, chunk: ta.expected_gradients(
        CNN,
        x,
        TARGETS,
        references=REFS,
        samples=4,
        chunk_size=chunk,
        generator=torch.Generator().manual_seed(0),
    ),
    "blur": lambda x, chunk: ta.blur_integrated_gradients(
        CNN, x, TARGETS, max_sigma=3.0, steps=4, chunk_size=chunk
    ),
    "guided": lambda x, chunk: ta.guided_integrated_gradients(
        CNN, x, TARGETS, steps=4, chunk_size=chunk
    ),
    "idgi": lambda x, chunk: ta.idgi(CNN, x, TARGETS, steps=4, chunk_size=chunk),
}


@pytest.mark.parametrize("name", sorted(CALLS))
def test_contexts_chunks_and_model_state(name):
    call = CALLS[name]
    before = snapshot(CNN)
    plain = call(IMAGES, None)
    assert plain.shape == IMAGES.shape and plain.dtype == torch.float64
    close(call(IMAGES, 5), plain, rtol=1e-10)
    with torch.inference_mode():
        close(call(IMAGES.clone(), 5), plain, rtol=1e-10)
    with torch.no_grad():
        close(call(IMAGES, None), plain, rtol=1e-10)
    assert_unchanged(CNN, before)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: call(IMAGES, 4), range(2)))
    for r in results:
        close(r, plain, rtol=1e-10)
    assert_unchanged(CNN, before)


def test_nan_in_the_path_is_reported_never_zeroed():
    class Log(torch.nn.Module):
        def forward(self, x):
            return torch.log(x).sum(1, keepdim=True)  # -inf / NaN at the zero baseline

    x = torch.rand(2, 3, dtype=torch.float64) + 0.5
    _, delta = ta.idgi(Log().eval(), x, 0, steps=4, return_delta=True)
    assert not torch.isfinite(delta).all()
    g = torch.tensor([[1.0, math.nan], [0.0, 0.0]], dtype=torch.float64)
    (corrected,) = idgi_correction((g,), torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert corrected[0].isnan().all()  # a NaN gradient is never turned into 0
    assert torch.equal(corrected[1], torch.zeros(2, dtype=torch.float64))  # a zero one gives 0


def test_blur_ig_tuple_inputs_and_callable_target():
    """Each image input is blurred on its own path; a callable target explains any score."""

    class TwoImages(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a = torch.nn.Conv2d(1, 2, 3, padding=1)
            self.b = torch.nn.Conv2d(2, 2, 3, padding=1)

        def forward(self, x, y):
            return torch.cat(
                [torch.tanh(self.a(x)).mean((2, 3)), torch.tanh(self.b(y)).mean((2, 3))], 1
            )

    torch.manual_seed(0)
    model = TwoImages().double().eval()
    x = torch.rand(2, 1, 5, 5, dtype=torch.float64)
    y = torch.rand(2, 2, 4, 6, dtype=torch.float64)
    target = lambda out: out.softmax(1)[:, 3]  # noqa: E731
    (ax, ay), delta = ta.blur_integrated_gradients(
        model, (x, y), target, max_sigma=2.0, steps=48, return_delta=True
    )
    assert ax.shape == x.shape and ay.shape == y.shape
    blur = lambda t: gaussian_blur(t, 2.0, mode="constant")  # noqa: E731
    start = model(blur(x), blur(y)).softmax(1)[:, 3]
    end = model(x, y).softmax(1)[:, 3]
    close(delta, (ax.sum((1, 2, 3)) + ay.sum((1, 2, 3))) - (end - start).detach(), rtol=1e-9)
    assert delta.abs().max() < 1e-4 * (end - start).abs().max()


class _RowCounter(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.rows = model, 0

    def forward(self, x):
        self.rows += x.shape[0]
        return self.model(x)


@pytest.mark.parametrize("method", ["ig", "guided"])
def test_idgi_evaluates_no_forward_only_rows(method):
    model, x = small_cnn()
    counter = _RowCounter(model).eval()
    steps, batch = 6, x.shape[0]
    plain = {"ig": ta.integrated_gradients, "guided": ta.guided_integrated_gradients}[method]
    kwargs = {"method": "riemann_middle"} if method == "ig" else {}
    plain(counter, x, TARGETS, steps=steps, chunk_size=4, **kwargs)
    method_rows = counter.rows
    counter.rows = 0
    ta.idgi(counter, x, TARGETS, method=method, steps=steps, chunk_size=4)
    # n x B gradient rows, plus the B rows at the inputs whose scores are s(x)
    assert counter.rows == steps * batch + batch
    assert counter.rows <= method_rows + batch


def test_expected_gradients_delta_forward_is_chunked_under_auto():
    """The references' scores for the delta go through the model in B-row calls, not in one
    call of samples x B rows, when chunk_size is "auto" (memory_budget applies)."""
    sizes = []

    class Counting(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)).double()

        def forward(self, x):
            if not torch.is_grad_enabled():  # the forward-only calls (scores)
                sizes.append(x.shape[0])
            return self.inner(x)

    model = Counting().eval()
    x = torch.rand(2, 3, 2, 2, dtype=torch.float64)
    refs = torch.rand(5, 3, 2, 2, dtype=torch.float64)
    ta.expected_gradients(
        model, x, 1, references=refs, samples=8, chunk_size="auto", memory_budget=1,
        return_delta=True, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert sizes and max(sizes) <= 2


def test_idgi_guided_refuses_a_memory_budget_it_cannot_use():
    model, x = small_cnn()
    with pytest.raises(ValueError, match="memory_budget does not apply to method='guided'"):
        ta.idgi(model, x, TARGETS, method="guided", steps=4, memory_budget=1 << 20)
