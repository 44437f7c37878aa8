"""What a copy derived from weights was made from, to tell when it must be made again.

:class:`~steer.performance.CastOnce`, :class:`~steer.projections.FusedProjections` and
:class:`~steer.merged_lora.MergedLoRA` keep weights derived from a model's (cast, fused, merged)
between edits, at fixed addresses a compiled graph reads; each remakes its copy in place once
the tensors it came from were replaced or changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from torch import Tensor


@dataclass(frozen=True, eq=False)
class Sources:
    """The tensors a copy was made from and their version counters then.

    Example:
        >>> import torch
        >>> w = torch.zeros(2)
        >>> sources = Sources.of([w])
        >>> sources.current([w]), sources.current([w.clone()])
        (True, False)
        >>> _ = w.add_(1)  # changed in place: its version counter moves
        >>> sources.current([w])
        False
    """

    tensors: tuple[Tensor, ...]
    versions: tuple[int, ...]

    @classmethod
    def of(cls, tensors: Iterable[Tensor]) -> Sources:
        tensors = tuple(tensors)
        return cls(tensors, tuple(t._version for t in tensors))

    def current(self, tensors: Iterable[Tensor]) -> bool:
        """Whether ``tensors`` are the same objects (not equal values), unchanged since."""
        tensors = tuple(tensors)
        return (
            len(tensors) == len(self.tensors)
            and all(a is b for a, b in zip(tensors, self.tensors))
            and tuple(t._version for t in tensors) == self.versions
        )
