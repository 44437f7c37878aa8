"""What a copy derived from weights was made from, to tell when it must be made again.

:class:`~steer.performance.CastOnce`, :class:`~steer.projections.FusedProjections` and
:class:`~steer.merged_lora.MergedLoRA` keep weights derived from a model's (cast, fused, merged)
between edits, at fixed addresses a compiled graph reads; each remakes its copy in place once
the tensors it came from were replaced or changed in place (:class:`Sources`), or, for a write
its version counters do not show, once :class:`Fingerprint` finds their values changed.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
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
        return cls(tensors, tuple(_version(t) for t in tensors))

    def current(self, tensors: Iterable[Tensor]) -> bool:
        """Whether ``tensors`` are the same objects (not equal values), unchanged since."""
        tensors = tuple(tensors)
        return (
            len(tensors) == len(self.tensors)
            and all(a is b for a, b in zip(tensors, self.tensors))
            and tuple(_version(t) for t in tensors) == self.versions
        )


def _version(tensor: Tensor) -> int:
    """``tensor``'s version counter; 0 for an inference tensor (made under
    ``torch.inference_mode()``), which has none: a change to one is seen by
    :class:`Fingerprint` only."""
    return 0 if tensor.is_inference() else tensor._version


class Fingerprint:
    """Whether tensors' values changed between two looks, where their version counters cannot
    tell: a write through ``.data`` (peft's merge with ``safe_merge=False``,
    ``nn.Module._apply``, ``p.data.mul_(2)``) changes a parameter's values without moving them.

    A look reduces each floating-point tensor to one float32 number, the dot product of its
    values with fixed pseudo-random weights in [0.5, 1.5) (drawn once per device, as many as the
    largest tensor holds: 29 MB for AudioLDM2's UNet): a change of its values moves it unless the
    change is below the sum's rounding (one value by about 1e-7 of the sum) or cancels out by
    coincidence. It reads every tensor once, in one kernel per tensor (a look at AudioLDM2's UNet:
    1520 dot products in 3042 dispatches, against 16722 when each tensor was cut into rows of
    65536 weights), and synchronises once per device. Values with a NaN never compare equal: they
    read as changed at every look.

    Example:
        >>> w = torch.ones(3)
        >>> fingerprint = Fingerprint()
        >>> fingerprint.changed([w]), fingerprint.changed([w])  # the first look has nothing to compare
        (False, False)
        >>> _ = w.data.mul_(2)  # its version counter stays
        >>> fingerprint.changed([w])
        True
    """

    def __init__(self) -> None:
        self._weights: dict[torch.device, Tensor] = {}
        self._cuts: dict[torch.device, dict[int, Tensor]] = {}  # the probe's first n weights, by n
        self._last: dict[torch.device, Tensor] | None = None

    @torch.no_grad()
    def changed(self, tensors: Iterable[Tensor]) -> bool:
        """Whether the values of ``tensors`` (in the same order) differ from the last look's;
        ``False`` at the first look."""
        by_device: dict[torch.device, list[Tensor]] = {}
        for tensor in tensors:
            if tensor.is_floating_point():
                by_device.setdefault(tensor.device, []).append(tensor.reshape(-1))
        now = {}
        for device, values in by_device.items():
            weights = self._weights_for(device, [len(v) for v in values])
            # two dispatches a float32 tensor: its flat view above and the dot product
            now[device] = torch.stack(
                [torch.dot(v if v.dtype == torch.float32 else v.float(), w) for v, w in zip(values, weights)]
            )
        last, self._last = self._last, now
        return last is not None and (
            last.keys() != now.keys()
            or any(last[d].shape != now[d].shape or not torch.equal(last[d], now[d]) for d in now)
        )

    def _weights_for(self, device: torch.device, lengths: list[int]) -> list[Tensor]:
        """Weights on ``device`` for tensors of ``lengths`` values: the first ``n`` of one draw
        (the same at every look), drawn again, longer, for a longer tensor (a set of tensors that
        grew reads as changed anyway); the views are kept, as slicing is a dispatch a tensor."""
        longest = max(lengths)
        if device not in self._weights or len(self._weights[device]) < longest:
            generator = torch.Generator().manual_seed(0)
            self._weights[device] = (torch.rand(longest, generator=generator) + 0.5).to(device)
            self._cuts[device] = {}
        cuts, probe = self._cuts[device], self._weights[device]
        return [cuts[n] if n in cuts else cuts.setdefault(n, probe[:n]) for n in lengths]
