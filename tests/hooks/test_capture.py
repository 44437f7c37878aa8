import pytest
import torch
from torch import nn

from hooks import FeatureCapture


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU()), nn.Linear(4, 2)
    )


def _hook_count(net: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in net.modules())


@pytest.mark.parametrize(
    "select",
    [r"^(0|2)$", ["0", "2"], lambda name, module: isinstance(module, nn.Linear) and "." not in name],
)
def test_selects_by_pattern_names_or_predicate(select):
    net = _net()
    with FeatureCapture(net, select=select) as capture:
        net(torch.ones(3, 4))
        net(torch.zeros(5, 4))
    assert list(capture.features) == ["0", "2"]
    assert [f.shape for f in capture.features["0"]] == [(3, 4), (5, 4)]
    torch.testing.assert_close(capture.features["2"][0], net(torch.ones(3, 4)))
    assert _hook_count(net) == 0


def test_hooks_are_removed_after_an_exception():
    net = _net()
    with pytest.raises(RuntimeError, match="boom"):
        with FeatureCapture(net, select=r"Linear|^\d") as capture:
            assert _hook_count(net) > 0
            net(torch.ones(1, 4))
            raise RuntimeError("boom")
    assert _hook_count(net) == 0
    assert capture.features["0"]  # what was captured before the error is kept


def test_gradients_flow_through_captured_features():
    net = _net()
    x = torch.randn(2, 4, requires_grad=True)
    with FeatureCapture(net, select=["1.0"]) as capture:
        net(x)
    capture.last()["1.0"].sum().backward()
    expected = torch.ones(4) @ net[1][0].weight @ net[0].weight  # d(sum(W1 (W0 x)))/dx
    torch.testing.assert_close(x.grad, expected.expand(2, 4))
    assert x.grad.abs().sum() > 0


def test_detach_and_transform():
    net = _net()
    x = torch.randn(2, 4, requires_grad=True)
    with FeatureCapture(net, select=["0"], detach=True, transform=lambda f: f[:1]) as capture:
        net(x)
    (feature,) = capture.features["0"]
    assert feature.shape == (1, 4) and not feature.requires_grad
    capture.clear()
    assert capture.features["0"] == []


def test_unknown_selection_is_an_error():
    with pytest.raises(ValueError, match="no module named 'nope'"):
        FeatureCapture(_net(), select=["nope"])
    with pytest.raises(ValueError, match="matches"):
        FeatureCapture(_net(), select="attn1")


def _named() -> nn.Module:
    return nn.ModuleDict({
        "down": nn.ModuleDict({"attn1": nn.Linear(2, 2), "attn2": nn.Linear(2, 2)}),
        "up": nn.ModuleDict({"attn1": nn.Linear(2, 2), "norm": nn.LayerNorm(2)}),
    })


@pytest.mark.parametrize(
    ("select", "message"),
    [
        (["up.atn1"], r"no module named 'up.atn1' in ModuleDict: did you mean 'up.attn1'\?$"),
        ("dwn.attn2", r"no module of ModuleDict matches 'dwn.attn2': did you mean 'down.attn2'[ ,]"),
        (["zzz"], r"no module named 'zzz' in ModuleDict: its names include 'down', 'down.attn1', 'down.attn2', … \(6 in all\)"),
        ("up[", r"'up\[' is not a valid regular expression \(unterminated character set"),
    ],
    ids=["name", "pattern", "far", "bad-pattern"],
)
def test_a_selection_of_no_module_names_the_closest(select, message):
    with pytest.raises(ValueError, match=message):
        FeatureCapture(_named(), select=select)
