"""LRP on the forward as it runs: exactness checks, module rules, gates, state, wrappers.

The rule formulas are checked in ``test_lrp_rules.py`` (dense float64 references) and the
architectures in ``test_lrp_zoo.py``; here: what the capture does with code it meets.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

import torchattr as ta
from torchattr.lrp.rules import Constant, Epsilon, Pass, _Rule

E0 = ta.composites.by_kind({"conv": Epsilon(0.0), "dense": Epsilon(0.0), "op": Epsilon(0.0)})


def gradient_x_input(model: nn.Module, x: Tensor, target: Tensor) -> Tensor:
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    return (grad * x).detach()


class Noisy(nn.Module):
    """Adds fresh noise on every call: the second pass cannot reproduce the first."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 5)
        self.b = nn.Linear(5, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.b(torch.relu(self.a(x)) + torch.rand_like(x[:, :1]))


def test_a_forward_that_draws_random_numbers_is_refused_naming_the_layer():
    with pytest.raises(ta.LRPError, match=r"before layer 'b'"):
        ta.lrp(Noisy().eval(), torch.randn(2, 4))


@dataclass(frozen=True)
class Doubling(_Rule):
    """A broken user rule: its output is twice the layer's."""

    def layer(self, x, layer, nonneg=False, z=None):  # type: ignore[no-untyped-def]
        return 2 * Epsilon().layer(x, layer, nonneg, z)


def test_a_rule_that_changes_the_value_is_named():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    composite = ta.composites.by_name({"2": Doubling()}) | ta.composites.EpsilonPlus()
    with pytest.raises(ta.LRPError, match=r"differs from the model at '2'"):
        ta.lrp(model, torch.randn(2, 4), composite=composite)


class Counting(nn.Module):
    """Updates a buffer on every forward, in eval mode too (a running count)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.fc(x) * (1 + 0 * self.calls)


def test_state_updated_by_the_forward_is_restored():
    model = Counting().double().eval()
    x = torch.randn(3, 3, dtype=torch.float64)
    target = torch.tensor([0, 1, 0])
    expected = gradient_x_input(model, x, target)
    model.calls.zero_()
    relevance = ta.lrp(model, x, target, composite=E0)
    assert model.calls.item() == 0
    torch.testing.assert_close(relevance, expected)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: Tensor) -> Tensor:
        return torch.special.erf(self.fc(x))


class WithBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = Block()
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.block(x))


def test_an_operation_without_rule_names_the_operation_its_module_and_fixes():
    model = WithBlock().eval()
    with pytest.raises(TypeError, match=r"'block.special_erf'.*inside Block 'block'.*by_name"):
        ta.lrp(model, torch.randn(2, 4))


def test_a_whole_module_rule_covers_the_operations_inside():
    torch.manual_seed(0)
    model = WithBlock().double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    target = torch.tensor([0, 1, 1])
    relevance = ta.lrp(model, x, target, composite=ta.composites.by_name({"block": Pass()}) | E0)
    # Pass on the block: the inputs receive what the head's rule gave the block's output.
    hidden = model.block(x).detach()
    torch.testing.assert_close(relevance, ta.lrp(model.head, hidden, target, composite=E0))
    sites = {site.name: rule for site, rule in ta.lrp_rules(model, x, {"block": Pass()})}
    assert sites["block"] == Pass() and "block.fc" not in sites
    nothing = ta.lrp(model, x, target, composite={"block": Constant()})
    assert torch.equal(nothing, torch.zeros_like(x))
    with pytest.raises(TypeError, match=r"Pass on module '0'.*shape"):
        ta.lrp(nn.Sequential(WithBlock()).eval(), x.float(), composite={"0": Pass()})


class Gated(nn.Module):
    """Squeeze-excitation on a feature map and a hand-written SiLU: both are gates."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.squeeze = nn.Linear(4, 4, bias=False)
        self.head = nn.Linear(4, 3, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        h = h * torch.sigmoid(h)  # SiLU written out
        gate = torch.sigmoid(self.squeeze(h.mean(dim=(2, 3))))
        h = h * gate[:, :, None, None]  # squeeze-excitation
        return self.head(h.mean(dim=(2, 3)))


def test_products_with_a_gate_hold_the_gate_and_conserve():
    torch.manual_seed(0)
    model = Gated().double().eval()
    x = torch.randn(3, 2, 5, 5, dtype=torch.float64)
    _, report = ta.lrp(model, x, composite=E0, return_conservation=True)
    torch.testing.assert_close(report.relevance, report.score, rtol=1e-6, atol=1e-9)
    gated = [site.name for site, _ in ta.lrp_rules(model, x) if site.target == "Tensor.mul"]
    assert gated == ["mul", "mul_1"]


class Swish(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(x)
        return x * torch.sigmoid(x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return grad * (s * (1 + x * (1 - s)))


class CustomFunction(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(Swish.apply(self.fc(x)))


def test_a_custom_autograd_function_is_refused_not_followed():
    with pytest.raises(ta.LRPError, match=r"gradients disabled|lost track"):
        ta.lrp(CustomFunction().eval(), torch.randn(2, 3))


def test_training_mode_is_explained_as_inference_with_a_warning():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.5), nn.Linear(6, 3)
    ).double()
    model[1].running_mean.uniform_(-1, 1)
    x = torch.randn(4, 4, dtype=torch.float64)
    expected = ta.lrp(model.eval(), x, 1)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="training mode"):
        got = ta.lrp(model, x, 1)
    torch.testing.assert_close(got, expected)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_forward_kwargs_reach_the_model_and_are_not_attributed():
    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: Tensor, mask: Tensor) -> Tensor:
            return self.fc(x * mask)

    torch.manual_seed(0)
    model = Masked().double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [0, 1, 1, 1]])
    relevance = ta.lrp(model, x, 0, composite=E0, forward_kwargs={"mask": mask})
    assert torch.equal(relevance[mask == 0], torch.zeros(int((mask == 0).sum()), dtype=x.dtype))
    reference = gradient_x_input(lambda t: model(t, mask), x, torch.zeros(3, dtype=torch.long))
    torch.testing.assert_close(relevance, reference)


def test_rule_names_with_and_without_a_wrapper_prefix():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    x = torch.randn(2, 4)
    plain = ta.lrp(model, x, composite={"2": Epsilon(0.5)})
    wrapped = nn.DataParallel(model)
    torch.testing.assert_close(ta.lrp(wrapped, x, composite={"module.2": Epsilon(0.5)}), plain)
    torch.testing.assert_close(ta.lrp(wrapped, x, composite={"2": Epsilon(0.5)}), plain)
    assert not torch.allclose(ta.lrp(wrapped, x), plain)


def test_recurrent_layers_are_refused_by_name():
    class Recurrent(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(3, 4, batch_first=True)
            self.head = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            return self.head(self.rnn(x)[0][:, -1])

    with pytest.raises(TypeError, match=r"recurrent layer 'rnn'.*not implemented"):
        ta.lrp(Recurrent().eval(), torch.randn(2, 5, 3))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_give_float32_relevance_close_to_float32(dtype):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3)
    ).eval()
    x = torch.randn(2, 1, 8, 8)
    reference = ta.lrp(model, x, 1)
    got = ta.lrp(model.to(dtype), x.to(dtype), 1)
    assert got.dtype == torch.float32
    scale = reference.abs().max()
    assert (got - reference).abs().max() <= 0.05 * scale


def test_in_place_operations_on_layer_outputs_follow_the_model():
    class InPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 4)
            self.b = nn.Linear(4, 4)
            self.head = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            y = self.a(x)
            y += self.b(x)  # the return value rebinds y
            F.relu(y, inplace=True)  # the return value is dropped: y itself must change
            z = self.b(y)
            z.mul_(2.0)
            return self.head(z)

    torch.manual_seed(0)
    model = InPlace().double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    target = torch.tensor([1, 0, 1])
    torch.testing.assert_close(
        ta.lrp(model, x, target, composite=E0), gradient_x_input(model, x, target)
    )


def test_no_process_wide_hook_stays_after_a_call_and_compile_still_traces():
    from torch.nn.modules import module as modules

    model = nn.Sequential(nn.Linear(4, 3)).eval()
    x = torch.randn(2, 4)
    ta.lrp(model, x)
    with pytest.raises(ValueError):
        ta.lrp(model, x, target=7)
    assert not modules._global_forward_pre_hooks and not modules._global_forward_hooks
    compiled = torch.compile(lambda t: ta.saliency(model, t), fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x), ta.saliency(model, x))


@pytest.mark.parametrize("make", ["ResNetLike", "DenseBlockNet"])
def test_an_exported_program_gives_the_modules_relevance(make):
    """``torch.export`` programs call aten operations (``aten.conv2d``, ``aten.batch_norm``):
    they are recognised by name and give the module's relevance."""
    import lrp_models

    torch.manual_seed(0)
    model = getattr(lrp_models, make)().eval()
    x = torch.randn(2, 3, 8, 8)
    exported = torch.export.export(model, (x,)).module()
    for composite in (None, ta.composites.EpsilonAlpha2Beta1()):
        torch.testing.assert_close(
            ta.lrp(exported, x, composite=composite), ta.lrp(model, x, composite=composite)
        )


def test_torchscript_is_refused_not_zeroed():
    scripted = torch.jit.script(nn.Sequential(nn.Linear(3, 2)).eval())
    with pytest.raises(ta.LRPError, match="TorchScript"):
        ta.lrp(scripted, torch.randn(2, 3))


def test_a_model_built_in_inference_mode_is_refused_by_name():
    with torch.inference_mode():
        model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2)).eval()
    with pytest.raises(ValueError, match=r"inference_mode\(\).*'0\.weight'"):
        ta.lrp(model, torch.randn(2, 3))


def test_a_module_made_inside_forward_is_followed_not_skipped():
    class Adhoc(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(nn.ReLU()(x) - nn.Tanh()(x))  # modules that are not submodules

    torch.manual_seed(0)
    model = Adhoc().double().eval()
    x = torch.randn(3, 4, dtype=torch.float64)
    _, report = ta.lrp(model, x, composite=E0, return_conservation=True)
    assert torch.isfinite(report.relevance).all() and report.relevance.abs().sum() > 0
    names = [site.name for site, _ in ta.lrp_rules(model, x)]
    assert "ReLU" in names and "Tanh" in names
