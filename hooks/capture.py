"""Capture the outputs of chosen submodules during forward passes, as a context manager.

Hooks are registered on ``__enter__`` and removed on ``__exit__``, also when the body raises, so a
model never keeps a stale hook (and the memory of the tensors it holds) after the block.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

Selector = str | Iterable[str] | Callable[[str, nn.Module], bool]


def select_modules(model: nn.Module, select: Selector) -> dict[str, nn.Module]:
    """Submodules of ``model`` chosen by a regular expression searched in the qualified name, an
    iterable of exact names, or a predicate ``(name, module) -> bool``; in registration order.

    A selection that names or matches no module is a ``ValueError`` listing the closest names.
    """
    modules = {n: m for n, m in model.named_modules() if n}
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


class FeatureCapture:
    """Record the outputs of selected modules for every forward call inside a ``with`` block.

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
        self._handles: list[RemovableHandle] = []

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            if self.detach:
                out = out.detach()
            if self.transform is not None:
                out = self.transform(out)
            self.features[name].append(out)

        return hook

    def __enter__(self) -> FeatureCapture:
        if self._handles:
            raise RuntimeError("this FeatureCapture is already active")
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

    def clear(self) -> None:
        """Forget what was captured (the hooks stay while the block is active)."""
        for captured in self.features.values():
            captured.clear()

    def last(self) -> dict[str, Tensor]:
        """The output of each module's most recent call."""
        return {name: captured[-1] for name, captured in self.features.items() if captured}
