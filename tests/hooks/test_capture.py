import re

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


class _Compiled(nn.Module):
    """A class of its own per compiled test: dynamo reuses a graph traced for any instance of a
    module class, so a Sequential compiled by another test could stand in for these."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inner = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).relu()


class _CompiledInside(_Compiled):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.inner(x)


def test_a_model_compiled_before_the_capture_is_a_warning_naming_torch_compile():
    """It recorded nothing, silently: the compiled graph runs no hook added after tracing."""
    net = _Compiled()
    compiled = torch.compile(net, backend="eager")
    x = torch.randn(2, 4)
    compiled(x)
    silent = r"FeatureCapture recorded nothing from \['inner'\]"
    with pytest.warns(UserWarning, match=silent) as caught, FeatureCapture(net, select=["inner"]) as capture:
        compiled(x)
    assert capture.features == {"inner": []}
    (warning,) = caught
    message = str(warning.message)
    assert "compiled with torch.compile before the capture was made" in message
    assert "make the capture before compiling, or capture on the uncompiled module" in message
    assert warning.filename == __file__  # points at the with block, not at the hooks


def test_a_selected_module_that_did_not_run_is_a_warning_naming_only_it():
    net = _net()
    silent = r"recorded nothing from \['2'\]: no call during the with block"
    with pytest.warns(UserWarning, match=silent), FeatureCapture(net, select=["0", "1.0", "2"]) as capture:
        net[1](net[0](torch.ones(1, 4)))
    assert [len(capture.features[name]) for name in ("0", "1.0", "2")] == [1, 1, 0]


def test_no_warning_when_every_module_ran_or_the_block_raised(recwarn):
    net = _net()
    with FeatureCapture(net, select=["0", "2"]) as capture:
        net(torch.ones(1, 4))
        capture.clear()  # what was kept goes; the modules still ran in this block
    with pytest.raises(RuntimeError, match="boom"), FeatureCapture(net, select=["0", "2"]):
        raise RuntimeError("boom")
    assert [str(w.message) for w in recwarn] == []


def test_a_capture_made_before_compiling_records_without_a_warning(recwarn):
    net = _CompiledInside()
    x = torch.randn(2, 4)
    capture = FeatureCapture(net, select=["inner"], detach=True)
    with capture:
        compiled = torch.compile(net, backend="eager")
        out = compiled(x)
        compiled(x)
    assert len(capture.features["inner"]) == 2
    torch.testing.assert_close(capture.features["inner"][0], out / 2)
    with capture:  # the graph traced with the hooks records into the new block's lists
        compiled(x)
    assert len(capture.features["inner"]) == 1
    assert [str(w.message) for w in recwarn] == []


def test_each_block_starts_afresh():
    """Reused, a capture accumulated every block's outputs (and their autograd graphs) until clear()."""
    net = _net()
    capture = FeatureCapture(net, select=["0"])
    kept = []
    for scale in (1.0, 2.0, 3.0):
        with capture:
            net(torch.full((1, 4), scale))
        kept.append(capture.features["0"])
        assert len(capture.features["0"]) == 1
    torch.testing.assert_close(capture.last()["0"], net[0](torch.full((1, 4), 3.0)))
    # lists taken from earlier blocks stay as they were
    for scale, captured in zip((1.0, 2.0, 3.0), kept):
        (feature,) = captured
        torch.testing.assert_close(feature, net[0](torch.full((1, 4), scale)))


@pytest.mark.parametrize(
    ("select", "message"),
    [
        (
            123,
            (
                r"^select must be a regular expression \(a str\), an iterable of module names or a predicate "
                r"\(name, module\) -> bool, got int 123$"
            ),
        ),
        (
            ["0", 2],
            (
                r"^select as an iterable must hold module names \(str\), got int 2: pass qualified names "
                r"\(model.named_modules\(\)\), one regular expression as a str, or a predicate"
            ),
        ),
        (
            b"conv_in",  # was read as the names 99, 111, ... ("got int 99")
            r"^select must be a regular expression \(a str\), an iterable of module names or a predicate .*got bytes b'conv_in'$",
        ),
    ],
    ids=["number", "number-among-names", "bytes"],
)
def test_a_selector_of_another_kind_lists_the_kinds_accepted(select, message):
    """A number gave "TypeError: 'int' object is not iterable"."""
    with pytest.raises(TypeError, match=message):
        FeatureCapture(_net(), select=select)


def test_a_module_returning_no_tensor_is_named():
    """With detach=True, a module returning a ModelOutput or a dict failed inside the model with
    "'UNet2DConditionOutput' object has no attribute 'detach'"; without, it was stored as it was."""
    from hooks import FeatureTap

    class Dict(nn.Module):
        def forward(self, x):
            return {"sample": x}

    net = nn.Sequential(nn.Linear(4, 4), Dict())
    message = "features are tensors, but module '1' (Dict) returned dict: select a submodule that returns a tensor"
    for detach in (False, True):
        with pytest.raises(TypeError, match=f"^{re.escape(message)}"), FeatureCapture(net, select=["1"], detach=detach):
            net(torch.randn(2, 4))
    with FeatureTap(net, ["1"]) as tap, pytest.raises(TypeError, match=f"^{re.escape(message)}"):
        tap.record(net, torch.randn(2, 4))
    assert _hook_count(net) == 0
