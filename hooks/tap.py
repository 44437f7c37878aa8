"""Feature capture that survives ``torch.compile``: hooks installed first, switched on per call.

:class:`~hooks.capture.FeatureCapture` adds its hooks around a block, so a model compiled before
the block never runs them: dynamo does not guard on hooks added after tracing, and the compiled
graph silently skips them. A :class:`FeatureTap` installs its hooks when it is made, before the
caller compiles anything, and they record only inside :meth:`FeatureTap.record`. Dynamo traces
the hooks into the graph: the recorded outputs become graph outputs, with their autograd graph.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from torch import Tensor, nn

from .capture import recorded_output, select_modules

Output = TypeVar("Output")


class FeatureTap:
    """Forward hooks on the named modules that record each output during :meth:`record` only.

    Args:
        model: the network to observe.
        names: qualified names of the modules to record (each must exist), or one name as a
            string: exact names, not the regular expression a string is to
            :class:`~hooks.FeatureCapture` (:func:`~hooks.capture.select_modules` turns a pattern
            into names).

    The hooks stay until :meth:`remove` (or the end of a ``with`` block); outside
    :meth:`record` they only read one flag.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())
        >>> with FeatureTap(net, ["0"]) as tap:
        ...     _ = net(torch.ones(4, 2))  # not recorded
        ...     out, features = tap.record(net, torch.ones(4, 2))
        >>> {name: f.shape for name, f in features.items()}
        {'0': torch.Size([4, 3])}
        >>> len(net[0]._forward_hooks)
        0
    """

    def __init__(self, model: nn.Module, names: str | Iterable[str]) -> None:
        self.names = [names] if isinstance(names, str) else list(names)
        self.recording = False
        self.removed = False
        self.features: dict[str, Tensor] = {}
        modules = select_modules(model, self.names)
        self._handles = [module.register_forward_hook(self._hook(name)) for name, module in modules.items()]

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            if self.recording:
                self.features[name] = recorded_output(name, module, output)

        return hook

    def record(self, fn: Callable[..., Output], *args: Any, **kwargs: Any) -> tuple[Output, dict[str, Tensor]]:
        """``fn(*args, **kwargs)`` and the output of each named module during it (the last call's,
        if a module runs more than once); traceable by dynamo, so ``torch.compile`` may wrap it.

        No ``try``/``finally`` here (dynamo would break the graph on it): a caller that can see
        an exception calls :meth:`reset` after it. Outputs recorded before this call (by a call
        that raised and was not reset, and any call after it) are dropped first, so a module
        that does not run here is reported, never answered with an earlier output.
        """
        if self.removed:
            raise RuntimeError(
                "this FeatureTap was removed (remove(), or the end of its with block), so it records "
                "nothing: make a new FeatureTap"
            )
        self.features.clear()
        self.recording = True
        out = fn(*args, **kwargs)
        self.recording = False
        # Read by name, not copied: compiled code then depends on (and dynamo guards) the names,
        # so a graph traced for other modules is not reused for this tap.
        missing = [name for name in self.names if name not in self.features]
        if missing:
            raise RuntimeError(
                f"the modules {missing} did not run during the recorded call, or ran without this tap's "
                "hooks: under torch.compile, the model was compiled before this FeatureTap was made (a "
                "compiled graph runs no hook added after it was traced: make the tap first), or dynamo "
                "reused a graph it traced for another instance of the same module class, which has no "
                "hooks (with torch._dynamo.config.skip_nnmodule_hook_guards = False set before compiling, "
                "dynamo checks hooks and traces again)"
            )
        features = {name: self.features[name] for name in self.names}
        self.features.clear()
        return out, features

    def reset(self) -> None:
        """Stop recording and drop what was recorded (after a call that raised)."""
        self.recording = False
        self.features.clear()

    def remove(self) -> None:
        """Remove the hooks; idempotent. A removed tap refuses to :meth:`record`."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self.removed = True
        self.reset()

    def __enter__(self) -> FeatureTap:  # noqa: PYI034 (typing.Self needs Python 3.11)
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
