import pytest
import torch

from backbones import Conditioning, PromptCache


def _cond(length: int, value: float) -> Conditioning:
    return Conditioning(
        cond={"states": torch.full((1, length, 3), value), "mask": torch.ones(1, length, dtype=torch.long)},
        uncond={"states": torch.full((1, 2, 3), -value), "mask": torch.ones(1, 2, dtype=torch.long)},
        masks={"states": "mask"},
    )


def test_cat_pads_sequences_with_masked_zeros():
    batch = Conditioning.cat([_cond(2, 1.0), _cond(5, 2.0)])
    assert len(batch) == 2
    assert batch.cond["states"].shape == (2, 5, 3)
    assert batch.cond["mask"].tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]
    assert batch.cond["states"][0, 2:].abs().sum() == 0
    assert torch.equal(batch.cond["states"][1], torch.full((5, 3), 2.0))


def test_guidance_batch_puts_uncond_first_and_pads_across_halves():
    kwargs = _cond(4, 1.0).guidance_batch()
    assert kwargs["states"].shape == (2, 4, 3)
    assert kwargs["states"][0, 0, 0] == -1.0 and kwargs["states"][1, 0, 0] == 1.0
    assert kwargs["mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_invalid_conditioning_is_rejected():
    with pytest.raises(ValueError, match="same fields"):
        Conditioning(cond={"a": torch.zeros(1)}, uncond={"b": torch.zeros(1)})
    with pytest.raises(ValueError, match="batch size"):
        Conditioning(cond={"a": torch.zeros(1)}, uncond={"a": torch.zeros(2)})
    with pytest.raises(ValueError, match="empty"):
        Conditioning.cat([])


def _masked(length: int) -> Conditioning:
    fields = lambda: {  # noqa: E731
        "states": torch.randn(1, length, 3),
        "mask": torch.ones(1, length, dtype=torch.long),
        "fixed": torch.randn(1, 8, 3),  # a sequence no mask hides: never lengthened
    }
    return Conditioning(cond=fields(), uncond=fields(), masks={"states": "mask"})


def test_padded_lengthens_masked_sequences_to_a_multiple_with_masked_zeros():
    cond = _masked(5)
    padded = cond.padded(4)
    for half, original in ((padded.cond, cond.cond), (padded.uncond, cond.uncond)):
        assert half["states"].shape == (1, 8, 3) and half["mask"].tolist() == [[1] * 5 + [0] * 3]
        assert torch.equal(half["states"][:, :5], original["states"]) and half["states"][:, 5:].abs().sum() == 0
        assert half["fixed"] is original["fixed"]
    assert padded.masks == cond.masks
    assert cond.padded(5).cond["states"].shape == (1, 5, 3)  # a multiple already
    assert Conditioning.cat([_masked(2), _masked(7)]).padded(32).cond["states"].shape == (2, 32, 3)


def test_masks_must_name_fields_and_agree_when_concatenated():
    with pytest.raises(ValueError, match="masks name fields the conditioning lacks: \\['mask'\\]"):
        Conditioning(cond={"states": torch.zeros(1, 2)}, uncond={"states": torch.zeros(1, 2)}, masks={"states": "mask"})
    plain = Conditioning(cond=_masked(2).cond, uncond=_masked(2).uncond)
    with pytest.raises(ValueError, match="different masks"):
        Conditioning.cat([_masked(2), plain])
    with pytest.raises(ValueError, match="at least 1 token"):
        _masked(2).padded(0)


def test_a_sequence_field_without_a_mask_is_not_padded():
    """Zero-padded without a mask, the denoiser read the zeros: a clip's prediction depended on
    the prompts batched beside it (41% of its displacement on a custom backbone)."""
    def unmasked(length: int) -> Conditioning:
        return Conditioning(cond={"states": torch.ones(1, length, 3)}, uncond={"states": torch.zeros(1, length, 3)})

    with pytest.raises(ValueError, match=r"the conditioning field 'states' differs in length \(dim 1: \[2, 5\]\) between rows and has no mask"):
        Conditioning.cat([unmasked(2), unmasked(5)])
    uneven = Conditioning(cond={"states": torch.ones(1, 4, 3)}, uncond={"states": torch.zeros(1, 2, 3)})
    with pytest.raises(ValueError, match="the conditioning field 'states' differs in length"):
        uneven.guidance_batch()
    assert Conditioning.cat([unmasked(4), unmasked(4)]).cond["states"].shape == (2, 4, 3)  # equal: nothing to pad


def test_a_prompt_cache_encodes_each_prompt_once_per_device_and_dtype():
    encoded = []

    def encode(prompt):
        encoded.append(prompt)
        return Conditioning(cond={"x": torch.full((1, 2), float(len(prompt)))}, uncond={"x": torch.zeros(1, 2)})

    cache, cpu = PromptCache(), torch.device("cpu")
    assert cache.get(["ab", "a", "ab"], encode, (cpu, torch.float32)).cond["x"][:, 0].tolist() == [2, 1, 2]
    cache.get("a", encode, (cpu, torch.float32))
    assert encoded == ["ab", "a"]
    cache.get("a", encode, (cpu, torch.bfloat16))  # the model was cast: its encodings no longer fit
    cache.get("a", encode, (torch.device("meta"), torch.bfloat16))  # moved
    cache.get(["a", "ab"], encode, (torch.device("meta"), torch.bfloat16))
    assert encoded == ["ab", "a", "a", "a", "ab"]
    cache.clear()
    cache.get("a", encode, (torch.device("meta"), torch.bfloat16))
    assert encoded[-1] == "a" and len(encoded) == 6
