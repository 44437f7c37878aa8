"""Text conditioning as data: what a backbone's denoiser needs for a batch of prompts.

A backbone encodes each prompt once (with its unconditional counterpart for classifier-free
guidance) into a :class:`Conditioning` of batch size 1 and caches it; batches are then built by
concatenating cached rows, which costs no text-encoder call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor


def _pad_cat(tensors: Sequence[Tensor], name: str, masks: dict[str, str]) -> Tensor:
    """The field ``name`` of several conditionings concatenated along dim 0, dim 1 zero-padded
    to the longest.

    Sequence fields (token states and their masks) differ in length between prompts. Zero is the
    right padding for both: a zero mask entry hides the padded token from cross-attention. A
    field without a mask (see ``masks``) cannot be padded: the denoiser would read the zeros,
    and a clip's prediction would depend on the prompts batched beside it.
    """
    if tensors[0].dim() < 2:
        return torch.cat(list(tensors))
    lengths = sorted({t.shape[1] for t in tensors})
    if len(lengths) > 1 and name not in masks and name not in masks.values():
        raise ValueError(
            f"the conditioning field {name!r} differs in length (dim 1: {lengths}) between rows and "
            "has no mask, so padding it would change the denoiser's output: name it with its mask "
            "field in Conditioning(masks={...}), or encode every prompt to the same length"
        )
    return torch.cat([pad_to(t, lengths[-1]) for t in tensors])


def pad_to(t: Tensor, length: int) -> Tensor:
    """``t`` ``(B, L, ...)`` zero-padded along dim 1 to ``length`` ≥ L."""
    missing = length - t.shape[1]
    if not missing:
        return t
    # F.pad lists (left, right) pairs from the last dimension backwards; dim 1 is the
    # (dim() - 2)-th pair.
    return F.pad(t, [0, 0] * (t.dim() - 2) + [0, missing])


@dataclass(frozen=True, eq=False)  # holds tensors: == by identity (by field raised)
class Conditioning:
    """Conditional and unconditional denoiser inputs for a batch of ``B`` prompts.

    Args:
        cond: keyword arguments of the denoiser for the prompts, each a tensor of shape
            ``(B, ...)``. Fields whose length (dim 1) varies between prompts must come with a mask
            field, since rows are zero-padded when concatenated.
        uncond: the same fields for the unconditional (negative) prompt of each row, ``(B, ...)``.
        masks: each token-sequence field ``(B, L, ...)`` whose padded tokens its mask field
            ``(B, L)`` hides from the denoiser, by name: the fields :meth:`padded` may lengthen.
    """

    cond: dict[str, Tensor]
    uncond: dict[str, Tensor]
    masks: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.cond.keys() != self.uncond.keys():
            raise ValueError(
                f"cond and uncond must have the same fields, got {sorted(self.cond)} "
                f"and {sorted(self.uncond)}"
            )
        unknown = sorted({*self.masks, *self.masks.values()} - self.cond.keys())
        if unknown:
            raise ValueError(f"masks name fields the conditioning lacks: {unknown}")
        sizes = {t.shape[0] for t in (*self.cond.values(), *self.uncond.values())}
        if len(sizes) != 1:
            raise ValueError(f"all conditioning fields must share the batch size, got {sizes}")

    def __len__(self) -> int:
        return next(iter(self.cond.values())).shape[0]

    @classmethod
    def cat(cls, items: Sequence[Conditioning]) -> Conditioning:
        """Concatenate conditionings along the batch, padding sequence fields."""
        if not items:
            raise ValueError("cannot concatenate an empty list of conditionings")
        if len(items) == 1:
            return items[0]
        keys, masks = items[0].cond.keys(), items[0].masks
        if any(c.masks != masks for c in items):
            raise ValueError(f"cannot concatenate conditionings with different masks: {[c.masks for c in items]}")
        return cls(
            cond={k: _pad_cat([c.cond[k] for c in items], k, masks) for k in keys},
            uncond={k: _pad_cat([c.uncond[k] for c in items], k, masks) for k in keys},
            masks=masks,
        )

    def padded(self, multiple: int) -> Conditioning:
        """The same conditioning with each masked sequence field (see ``masks``) and its mask
        zero-padded to a multiple of ``multiple`` tokens: the masks hide the padding, so the
        denoiser's output is unchanged up to rounding, and prompts of different lengths give a
        few shapes (what compiled calls, traced for static shapes, need to be reused)."""
        if multiple < 1:
            raise ValueError(f"pad to a multiple of at least 1 token, got {multiple}")

        def pad(fields: dict[str, Tensor]) -> dict[str, Tensor]:
            out = dict(fields)
            for name, mask in self.masks.items():
                length = -(-fields[name].shape[1] // multiple) * multiple
                out[name], out[mask] = pad_to(fields[name], length), pad_to(fields[mask], length)
            return out

        return Conditioning(cond=pad(self.cond), uncond=pad(self.uncond), masks=self.masks)

    def guidance_batch(self) -> dict[str, Tensor]:
        """Denoiser kwargs for one classifier-free-guidance call: ``[uncond; cond]``, ``(2B, ...)``."""
        return {k: _pad_cat([self.uncond[k], self.cond[k]], k, self.masks) for k in self.cond}

    def conditional_batch(self) -> dict[str, Tensor]:
        """Denoiser kwargs for the conditional branch only, ``(B, ...)``."""
        return dict(self.cond)

    def to(self, device: torch.device | str) -> Conditioning:
        return Conditioning(
            cond={k: v.to(device) for k, v in self.cond.items()},
            uncond={k: v.to(device) for k, v in self.uncond.items()},
            masks=self.masks,
        )


class PromptCache:
    """Each distinct prompt's :class:`Conditioning`, encoded once while the model stays on one
    device in one dtype: a change of either (the model moved or cast after prompts were encoded)
    empties the cache, as its encodings would no longer fit the denoiser.

    Example:
        >>> cache = PromptCache()
        >>> encode = lambda p: Conditioning(cond={"x": torch.ones(1, 2)}, uncond={"x": torch.zeros(1, 2)})
        >>> cache.get(["a", "b", "a"], encode, (torch.device("cpu"), torch.float32)).cond["x"].shape
        torch.Size([3, 2])
    """

    def __init__(self) -> None:
        self._rows: dict[str, Conditioning] = {}
        self._state: tuple[torch.device, torch.dtype] | None = None

    def get(
        self,
        prompts: Sequence[str] | str,
        encode_one: Callable[[str], Conditioning],
        state: tuple[torch.device, torch.dtype],
    ) -> Conditioning:
        """Conditioning of ``prompts`` (batch ``len(prompts)``), encoding with ``encode_one`` each
        prompt not cached since the model's ``state`` (its device and dtype) was last this one.

        Each prompt is encoded on its own, so a row never depends on which other prompts share
        the batch.
        """
        if state != self._state:
            self._rows, self._state = {}, state
        if isinstance(prompts, str):
            prompts = [prompts]
        for prompt in prompts:
            if prompt not in self._rows:
                self._rows[prompt] = encode_one(prompt)
        return Conditioning.cat([self._rows[p] for p in prompts])

    def clear(self) -> None:
        """Forget every encoding (a text encoder's weights changed in place)."""
        self._rows = {}
