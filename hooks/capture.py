"""Capture the outputs of chosen submodules during forward passes, as a context manager.

Hooks are registered on ``__enter__`` and removed on ``__exit__``, also when the body raises, so a
model never keeps a stale hook (and the memory of the tensors it holds) after the block.
"""

from __future__ import annotations

import difflib
import re
import warnings
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

Selector = str | Iterable[str] | Callable[[str, nn.Module], bool]


def select_modules(model: nn.Module, select: Selector) -> dict[str, nn.Module]:
    """Submodules of ``model`` chosen by a regular expression searched in the qualified name, an
    iterable of exact names, or a predicate ``(name, module) -> bool``: a pattern's and a
    predicate's in registration order, names in the iterable's order.

    A selection that names or matches no module is a ``ValueError`` listing the closest names; a
    selector of another kind (a number, names that are not strings) is a ``TypeError`` listing
    the kinds accepted.
    """
    modules = {n: m for n, m in model.named_modules() if n}
    if isinstance(select, bytes | bytearray) or not isinstance(select, str | Iterable) and not callable(select):
        raise TypeError(
            f"select must be a regular expression (a str), an iterable of module names or a predicate "
            f"(name, module) -> bool, got {type(select).__name__} {select!r}"
        )
    if isinstance(select, str):
        try:
            pattern = re.compile(select)
        except re.error as error:
            raise ValueError(f"{select!r} is not a valid regular expression ({error})") from None
        chosen = {n: m for n, m in modules.items() if pattern.search(n)}
    elif callable(select):
        chosen = {n: m for n, m in modules.items() if select(n, m)}
    else:
        names = list(select)
        not_names = [n for n in names if not isinstance(n, str)]
        if not_names:
            raise TypeError(
                f"select as an iterable must hold module names (str), got {type(not_names[0]).__name__} "
                f"{not_names[0]!r}: pass qualified names (model.named_modules()), one regular expression "
                "as a str, or a predicate (name, module) -> bool"
            )
        every = dict(model.named_modules())  # "" (the model itself) too
        missing = [n for n in names if n not in every]
        if missing:
            raise ValueError(
                f"no module named {missing[0]!r} in {type(model).__name__}{suggest(missing[0], modules)}"
            )
        chosen = {n: every[n] for n in names}
    if not chosen:
        hint = suggest(select, modules) if isinstance(select, str) else ""
        raise ValueError(f"no module of {type(model).__name__} matches {select!r}{hint}")
    return chosen


def suggest(name: str, names: Iterable[str], *, shown: int = 3) -> str:
    """The end of an error message for a ``name`` not among ``names``: the closest ones
    (``difflib``), or else the first few.

    Example:
        >>> suggest("up_blocks.0.atn1", ["conv_in", "up_blocks.0.attn1", "up_blocks.0.attn2"])
        ": did you mean 'up_blocks.0.attn1' or 'up_blocks.0.attn2'?"
    """
    names = list(names)
    close = difflib.get_close_matches(name, names, n=shown)
    if close:
        *others, last = map(repr, close)
        return f": did you mean {', '.join(others) + ' or ' if others else ''}{last}?"
    if not names:
        return " (it has none)"
    more = f", … ({len(names)} in all)" if len(names) > shown else ""
    return f": its names include {', '.join(map(repr, names[:shown]))}{more}"


def recorded_output(name: str, module: nn.Module, output: Any) -> Tensor:
    """What a hook records of the module ``name``'s ``output``: a tensor as it is, a tuple's first
    element (diffusers' blocks return ``(hidden_states, ...)``); else a ``TypeError`` naming the
    module (a ``ModelOutput`` or a dict was stored, and failed later, far from its cause)."""
    out = output[0] if isinstance(output, tuple) else output
    if not isinstance(out, Tensor):
        raise TypeError(
            f"features are tensors, but module {name!r} ({type(module).__name__}) returned {type(output).__name__}: "
            "select a submodule that returns a tensor (or a tuple starting with one)"
        )
    return out


class FeatureCapture:
    """Record the outputs of selected modules for every forward call inside a ``with`` block.

    Each block starts afresh: entering it replaces :attr:`features` with empty lists, so a
    capture reused across blocks holds only the last block's outputs (lists taken from an
    earlier block stay as they were). Inside a block the outputs accumulate, one per call, until
    :meth:`clear`; after it they stay until the next block.

    At the end of a block that did not raise, a selected module that was not called during
    it is a ``UserWarning``: either it did not run, or the hooks were skipped by a model
    compiled with ``torch.compile`` before the block (a compiled graph runs no hook added after
    it was traced; :class:`~hooks.FeatureTap` is made before compiling).

    A module's output is recorded as :func:`recorded_output` says: a tensor, or a tuple's first
    element; any other output is a ``TypeError`` naming the module, raised from its forward call.

    Args:
        model: the network to observe.
        select: which submodules (see :func:`select_modules`).
        detach: store detached outputs (saves memory when no gradient is needed through them).
        transform: applied to each output before storing, e.g. to keep one half of a batch.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU())
        >>> with FeatureCapture(net, select=r"^0$") as capture:
        ...     _ = net(torch.ones(4, 2))
        >>> [f.shape for f in capture.features["0"]]
        [torch.Size([4, 3])]
        >>> len(net[0]._forward_hooks)
        0
    """

    def __init__(
        self,
        model: nn.Module,
        select: Selector,
        *,
        detach: bool = False,
        transform: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.modules = select_modules(model, select)
        self.detach = detach
        self.transform = transform
        self.features: dict[str, list[Tensor]] = {name: [] for name in self.modules}
        self._called: set[str] = set()  # modules called in the current block, whatever clear() drops
        self._handles: list[RemovableHandle] = []

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            self._called.add(name)
            out = recorded_output(name, module, output)
            if self.detach:
                out = out.detach()
            if self.transform is not None:
                out = self.transform(out)
            self.features[name].append(out)

        return hook

    def __enter__(self) -> FeatureCapture:  # noqa: PYI034 (typing.Self needs Python 3.11)
        if self._handles:
            raise RuntimeError("this FeatureCapture is already active")
        # New lists, not cleared ones: a list the caller kept from an earlier block stays intact.
        self.features = {name: [] for name in self.modules}
        self._called = set()
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        silent = [name for name in self.modules if name not in self._called]
        if silent and exc_type is None:
            warnings.warn(
                f"FeatureCapture recorded nothing from {silent}: no call during the with block ran their "
                "hooks. Either they did not run in the block, or the model was compiled with torch.compile "
                "before the capture was made (a compiled graph runs no hook added after it was traced, and "
                "dynamo may reuse a graph traced for another instance of the same module class): make the "
                "capture before compiling, or capture on the uncompiled module (with "
                "torch._dynamo.config.skip_nnmodule_hook_guards = False set before compiling, dynamo checks "
                "hooks and traces again)",
                UserWarning,
                stacklevel=2,
            )

    def clear(self) -> None:
        """Forget what was captured so far (the hooks stay while the block is active; entering a
        block clears too)."""
        for captured in self.features.values():
            captured.clear()

    def last(self) -> dict[str, Tensor]:
        """The output of each module's most recent call."""
        return {name: captured[-1] for name, captured in self.features.items() if captured}
