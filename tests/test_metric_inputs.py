"""Tuple and dict inputs on the metrics that perturb inputs: Captum's ``infidelity`` and
``sensitivity_max`` on the same perturbations, a plain-loop faithfulness correlation, linear
models whose exact scores are known, and the checks of the structures."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from torchattr.metrics import (
    average_drop,
    completeness,
    faithfulness_correlation,
    infidelity,
    max_sensitivity,
    monotonicity,
)


def seed(value: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(value)


class TwoInputs(nn.Module):
    """A non-linear model of an image-like ``a [N, 2, 3, 3]`` and a vector ``b [N, 5]``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(18, 8)
        self.b = nn.Linear(5, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return self.head(torch.tanh(self.a(a.flatten(1)) + self.b(b)))


def inputs_and_attributions(batch: int = 3) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    g = seed(1)
    inputs = (torch.randn(batch, 2, 3, 3, generator=g), torch.randn(batch, 5, generator=g))
    attributions = (torch.randn(batch, 2, 3, 3, generator=g), torch.randn(batch, 5, generator=g))
    return inputs, attributions


def fixed_perturbations(inputs: tuple[Tensor, ...], samples: int, scale: float) -> list:
    g = seed(2)
    return [
        tuple(scale * torch.randn(t.shape, generator=g) for t in inputs) for _ in range(samples)
    ]


def sample_major(perturbations: list) -> tuple[Tensor, ...]:
    """Captum's layout of the ``S x B`` perturbed rows: row ``b S + s``."""
    return tuple(torch.stack(entry, dim=1).flatten(0, 1) for entry in zip(*perturbations))


@pytest.mark.parametrize("normalize", [False, True])
def test_infidelity_tuple_inputs_match_captum(normalize: bool) -> None:
    captum_metrics = pytest.importorskip("captum.metrics")
    model = TwoInputs().eval()
    inputs, attributions = inputs_and_attributions()
    target = torch.tensor([0, 2, 1])
    draws = fixed_perturbations(inputs, 4, 0.1)
    queue = iter(draws)
    ours = infidelity(
        model, inputs, attributions, target, samples=4, normalize=normalize,
        perturbation=lambda x, generator: next(queue),
    )  # fmt: skip
    stacked = sample_major(draws)

    def perturb(expanded: tuple[Tensor, ...]) -> tuple:
        return stacked, tuple(x - p for x, p in zip(expanded, stacked))

    theirs = captum_metrics.infidelity(
        model, perturb, inputs, attributions, target=target, n_perturb_samples=4,
        normalize=normalize,
    )  # fmt: skip
    torch.testing.assert_close(ours, theirs.float(), atol=1e-5, rtol=1e-4)


def test_infidelity_dict_inputs_are_keywords_and_agree_with_the_tuple() -> None:
    model = TwoInputs().eval()
    inputs, attributions = inputs_and_attributions()
    as_dict = {"b": inputs[1], "a": inputs[0]}  # keyword order does not matter
    phi = {"a": attributions[0], "b": attributions[1]}
    by_tuple = infidelity(model, inputs, attributions, samples=5, generator=seed(3))
    # the default draw is one [B, F] draw over the entries in the inputs' order: b, then a
    by_dict = infidelity(model, as_dict, phi, samples=5, generator=seed(3))
    swapped = infidelity(
        lambda b, a: model(a, b), (inputs[1], inputs[0]), (attributions[1], attributions[0]),
        samples=5, generator=seed(3),
    )  # fmt: skip
    torch.testing.assert_close(by_dict, swapped)
    assert by_tuple.shape == (3,) and bool((by_tuple > 0).all())


def test_max_sensitivity_tuple_inputs_match_captum() -> None:
    captum_metrics = pytest.importorskip("captum.metrics")
    inputs, _ = inputs_and_attributions()
    weights = torch.randn(2, 3, 3, generator=seed(4))

    def explain(x: tuple[Tensor, Tensor], target=None) -> tuple[Tensor, Tensor]:
        return x[0] ** 2 * weights, torch.sin(x[1])

    draws = fixed_perturbations(inputs, 6, 0.05)
    queue = iter(draws)
    ours = max_sensitivity(explain, inputs, samples=6, perturbation=lambda x, g: next(queue))
    stacked = sample_major(draws)
    theirs = captum_metrics.sensitivity_max(
        lambda x: explain(x),
        inputs,
        perturb_func=lambda x: tuple(a + p for a, p in zip(x, stacked)),
        n_perturb_samples=6,
    )
    torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
    # a single tensor explanation of tuple inputs is fine too (one entry's worth)
    single = max_sensitivity(lambda x, t: torch.sin(x[1]), inputs, samples=3, generator=seed(0))
    assert single.shape == (3,)


def linear_pair() -> tuple[nn.Module, tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``f(a, b) = W_a a + W_b b``: input x gradient is exact, ``(a W_a[t], b W_b[t])``."""

    class Linear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(5)
            self.a = nn.Linear(6, 3, bias=False)
            self.b = nn.Linear(4, 3, bias=False)

        def forward(self, a: Tensor, b: Tensor) -> Tensor:
            return self.a(a.flatten(1)) + self.b(b)

    model = Linear().double().eval()
    g = seed(6)
    a, b = torch.randn(2, 2, 3, generator=g).double(), torch.randn(2, 4, generator=g).double()
    t = torch.tensor([1, 2])
    ixg = (a * model.a.weight[t].reshape(2, 2, 3), b * model.b.weight[t])
    return model, (a, b), tuple(v.detach() for v in ixg)


def test_faithfulness_correlation_tuple_matches_a_plain_loop_and_linear_is_one() -> None:
    model, inputs, phi = linear_pair()
    t = torch.tensor([1, 2])
    exact = faithfulness_correlation(model, inputs, phi, t, subset_size=3, runs=20)
    torch.testing.assert_close(exact, torch.ones(2, dtype=torch.float64))
    # a non-linear model, against the documented draws: rand([B, F]) per run, top subset_size
    nonlinear = TwoInputs().double().eval()
    inputs, attributions = inputs_and_attributions(2)
    inputs = tuple(v.double() for v in inputs)
    baseline = (torch.full((2, 3, 3), 0.5, dtype=torch.float64), 0.0 * inputs[1][:1])
    ours = faithfulness_correlation(
        nonlinear, inputs, attributions, t, subset_size=4, runs=15, baseline=baseline,
        generator=seed(7),
    )  # fmt: skip
    g = seed(7)
    x = torch.cat([v.flatten(1) for v in inputs], 1)
    phi_flat = torch.cat([v.flatten(1) for v in attributions], 1).double()
    fill = torch.cat([baseline[0].expand(2, 2, 3, 3).flatten(1), torch.zeros(2, 5)], 1).double()
    sums, drops = [], []
    with torch.no_grad():
        clean = nonlinear(*inputs)[torch.arange(2), t]
        for _ in range(15):
            subset = torch.zeros(2, 23, dtype=torch.bool)
            subset.scatter_(1, torch.rand(2, 23, generator=g).topk(4, dim=1).indices, True)
            removed = torch.where(subset, fill, x)
            out = nonlinear(removed[:, :18].reshape(2, 2, 3, 3), removed[:, 18:])
            sums.append((phi_flat * subset).sum(1))
            drops.append(clean - out[torch.arange(2), t])
    sums, drops = torch.stack(sums), torch.stack(drops)
    expected = torch.stack(
        [torch.corrcoef(torch.stack([sums[:, i], drops[:, i]]))[0, 1] for i in range(2)]
    )
    torch.testing.assert_close(ours, expected.float(), atol=1e-5, rtol=0)


def test_completeness_and_monotonicity_on_tuples_of_a_linear_model() -> None:
    model, inputs, phi = linear_pair()
    t = torch.tensor([1, 2])
    error = completeness(model, inputs, phi, t)
    torch.testing.assert_close(error, torch.zeros(2, dtype=torch.float64), atol=1e-12, rtol=0)
    # From the zero baseline, putting back feature i adds its contribution phi_i to the logit:
    # monotonic iff every contribution after the first (the smallest) is >= 0.
    # sample 0 has inputs of the weights' signs: all contributions >= 0, monotonic
    a, b = inputs
    a = torch.cat([model.a.weight[1].reshape(1, 2, 3).sign(), a[1:]]).detach()
    b = torch.cat([model.b.weight[1].reshape(1, 4).sign(), b[1:]]).detach()
    phi = (a * model.a.weight[t].reshape(2, 2, 3), b * model.b.weight[t])
    phi = tuple(p.detach() for p in phi)
    flat = torch.cat([p.flatten(1) for p in phi], 1)
    ok = monotonicity(model, (a, b), phi, t, score="logit")
    expected = (flat.sort(dim=1).values[:, 1:] >= 0).all(dim=1)
    assert expected.tolist() == [True, False]
    assert torch.equal(ok, expected)


def test_average_drop_tuple_masks_every_entry_by_the_shared_maximum() -> None:
    model = TwoInputs().eval()
    inputs, attributions = inputs_and_attributions(2)
    maps = tuple(a.abs() for a in attributions)
    peak = torch.maximum(maps[0].flatten(1).amax(1), maps[1].amax(1))
    with torch.no_grad():
        y = model(*inputs).softmax(1)
        t = y.argmax(1)
        masked = model(
            inputs[0] * maps[0] / peak.view(-1, 1, 1, 1), inputs[1] * maps[1] / peak[:, None]
        )
        o = masked.softmax(1)[torch.arange(2), t]
        y = y[torch.arange(2), t]
    expected = 100 * (y - o).clamp_min(0) / y
    torch.testing.assert_close(average_drop(model, inputs, maps), expected)


TWO = (torch.ones(2, 3), torch.ones(2, 4))


@pytest.mark.parametrize(
    ("inputs", "attributions", "error", "match"),
    [
        ((TWO[0], TWO[1].long()), None, TypeError, "inputs\\[1\\] has dtype"),
        ((TWO[0], torch.ones(3, 3)), None, ValueError, "batch size 2"),
        (TWO, TWO[0], ValueError, "structure of the inputs"),
        (TWO, (TWO[0], TWO[0]), ValueError, "attributions\\[1\\] has shape"),
        ({"a": TWO[0]}, {"b": TWO[0]}, ValueError, "keys"),
        ({"a": TWO[0]}, {"a": TWO[0].long()}, TypeError, "floating"),
    ],
)
def test_bad_structures_are_refused(inputs, attributions, error, match) -> None:
    model = lambda *args, **kwargs: torch.zeros(2, 2)  # noqa: E731
    if attributions is None:
        attributions = inputs
    with pytest.raises(error, match=match):
        infidelity(model, inputs, attributions, target=0)


def test_forward_kwargs_may_not_repeat_a_dict_input() -> None:
    model = lambda a, mask: a.sum(1, keepdim=True) * mask  # noqa: E731
    inputs = {"a": torch.ones(2, 3)}
    with pytest.raises(ValueError, match="both name \\['a'\\]"):
        infidelity(model, inputs, inputs, target=0, forward_kwargs={"a": 1})
    mask = torch.tensor([[1.0], [0.0]])  # per-sample: follows its sample into the copies
    out = completeness(model, inputs, {"a": torch.ones(2, 3)}, 0, forward_kwargs={"mask": mask})
    torch.testing.assert_close(out, torch.tensor([0.0, 3.0]))
