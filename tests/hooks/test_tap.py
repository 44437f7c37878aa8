"""FeatureTap: hooks installed once, recording only inside record(), gone after remove()."""

import pytest
import torch

from hooks import FeatureTap


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))


def test_records_only_inside_record_and_keeps_the_graph():
    net = _net()
    x = torch.randn(4, 2, requires_grad=True)
    with FeatureTap(net, ["0", "2"]) as tap:
        net(x)
        assert tap.features == {}
        out, features = tap.record(net, x)
        assert sorted(features) == ["0", "2"]
        torch.testing.assert_close(features["2"], out)
        torch.testing.assert_close(features["0"], net[0](x))
        (grad,) = torch.autograd.grad(features["0"].sum(), x)  # recorded with its autograd graph
        torch.testing.assert_close(grad, net[0].weight.sum(0).expand(4, 2))
        assert tap.features == {} and not tap.recording


def test_a_call_that_raises_is_reset_and_the_hooks_go():
    net = _net()
    tap = FeatureTap(net, ["0"])
    with pytest.raises(RuntimeError):
        tap.record(net, torch.randn(4, 5))  # wrong width: raises inside the first Linear
    tap.reset()
    net(torch.randn(4, 2))
    assert tap.features == {} and not tap.recording
    tap.remove()
    tap.remove()
    assert all(not m._forward_hooks for m in net.modules())


def test_a_call_that_raised_without_a_reset_leaves_no_features_behind():
    """Outputs of a call that raised (and of calls after it, still recording) were returned by
    the next record() whose call never ran the module, in place of the "did not run" error."""
    net = _net()
    with FeatureTap(net, ["0"]) as tap:

        def raises(x):
            net(x)
            raise KeyError("after the module ran")

        with pytest.raises(KeyError):
            tap.record(raises, torch.randn(4, 2))
        net(torch.full((1, 2), 7.0))
        with pytest.raises(RuntimeError, match=r"the modules \['0'\] did not run"):
            tap.record(net[1], torch.zeros(1, 3))
        _, features = tap.record(net, torch.ones(1, 2))
        torch.testing.assert_close(features["0"], net[0](torch.ones(1, 2)))


def test_unknown_module_is_a_clear_error():
    with pytest.raises(ValueError, match="no module named 'nope'"):
        FeatureTap(_net(), ["nope"])


def test_compiled_record_returns_the_features_of_each_tap():
    """A compiled function recording through a tap: traced with the hooks, reused by a tap on the
    same modules, traced again for a tap on others (not the stale graph)."""
    net = _net()
    x = torch.randn(4, 2)
    for names in (["0"], ["0"], ["0", "2"], ["2"]):
        with FeatureTap(net, names) as tap:
            out, features = torch.compile(tap.record, backend="eager", dynamic=False)(net, x)
        assert sorted(features) == names
        torch.testing.assert_close(features[names[-1]], net[int(names[-1])](x) if names[-1] == "0" else out)


def test_a_string_is_one_module_name():
    """It was split into characters ("no module named 'u'")."""
    net = torch.nn.Sequential(torch.nn.Linear(2, 3))
    net.add_module("head", torch.nn.Linear(3, 1))
    with FeatureTap(net, "head") as tap:
        out, features = tap.record(net, torch.ones(4, 2))
    assert tap.names == ["head"] and list(features) == ["head"]
    torch.testing.assert_close(features["head"], out)


def test_recording_with_a_removed_tap_says_it_was_removed():
    """It said "the modules ['0'] did not run during the recorded call"."""
    net = _net()
    with FeatureTap(net, ["0"]) as tap:
        pass
    with pytest.raises(RuntimeError, match=r"this FeatureTap was removed \(remove\(\), or the end of its with block\)"):
        tap.record(net, torch.ones(4, 2))
    assert not tap.recording


class _Reused(torch.nn.Module):
    """A class of its own: dynamo's graphs for it are this file's only."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = torch.nn.Linear(2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x).relu()


class _Guarded(_Reused):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.inner(x)


def test_a_tap_made_after_compiling_says_why_nothing_was_recorded():
    """It said only "the modules ['inner'] did not run during the recorded call"."""
    net = _Reused()
    x = torch.ones(4, 2)
    compiled = torch.compile(net, backend="eager")
    compiled(x)
    with FeatureTap(net, ["inner"]) as tap, pytest.raises(RuntimeError) as raised:
        tap.record(compiled, x)
    message = str(raised.value)
    assert message.startswith(
        "the modules ['inner'] did not run during the recorded call, or ran without this tap's hooks"
    )
    assert "the model was compiled before this FeatureTap was made" in message
    assert "dynamo reused a graph it traced for another instance of the same module class" in message
    assert "torch._dynamo.config.skip_nnmodule_hook_guards = False set before compiling" in message


def test_guarding_hooks_as_the_message_says_records_from_either_instance():
    """Without the guard, the second instance ran the graph traced for the first, with no hooks."""
    x = torch.ones(4, 2)
    with torch._dynamo.config.patch(skip_nnmodule_hook_guards=False):
        first, second = _Guarded(), _Guarded()
        torch.compile(first, backend="eager")(x)
        with FeatureTap(second, ["inner"]) as tap:
            out, features = tap.record(torch.compile(second, backend="eager"), x)
    torch.testing.assert_close(features["inner"], out / 2)
