"""WordEncoder.add_words: the vocabulary grows for a concept's token, nothing else changes."""

from __future__ import annotations

import pytest
import torch

from backbones.word_encoder import WordEncoder, WordEncoderConfig


@pytest.fixture()
def encoder() -> WordEncoder:
    torch.manual_seed(0)
    return WordEncoder(WordEncoderConfig(words=["a", "recording", "of", "guitar"], dim=8, layers=1, heads=2)).eval()


def test_other_prompts_encode_as_before(encoder):
    ids, mask = encoder.tokenize(["a recording of a guitar"])
    before = encoder(ids, mask)
    assert encoder.add_words(["sks", "zz"]) == [8, 9]
    assert torch.equal(encoder(*encoder.tokenize(["a recording of a guitar"])), before)
    assert encoder.unknown_words("a sks guitar") == []
    mean = encoder.embed.weight[4:8].mean(0)
    torch.testing.assert_close(encoder.embed.weight[8], mean, rtol=0, atol=0)


def test_the_config_follows_so_save_and_load_work(encoder):
    encoder.add_words(["sks"], init="guitar")
    assert encoder.config.words == ["a", "recording", "of", "guitar", "sks"]
    reloaded = WordEncoder(encoder.config)
    reloaded.load_state_dict(encoder.state_dict())
    prompt = encoder.tokenize(["a sks guitar"])
    assert torch.equal(reloaded.eval()(*prompt), encoder(*prompt))


def test_frozen_tables_stay_frozen(encoder):
    encoder.requires_grad_(False)
    encoder.add_words(["sks"])
    assert not encoder.embed.weight.requires_grad


@pytest.mark.parametrize(
    ("words", "init", "match"),
    [
        (["guitar"], None, "already in the vocabulary"),
        (["<unk>"], None, "already in the vocabulary"),
        (["Sks"], None, "not one lower-case word"),
        (["two words"], None, "not one lower-case word"),
        (["sks", "sks"], None, "duplicates"),
        (["sks"], "banjo", "not in the vocabulary"),
    ],
)
def test_bad_words_are_refused(encoder, words, init, match):
    with pytest.raises(ValueError, match=match):
        encoder.add_words(words, init=init)
    assert len(encoder.vocabulary) == 8 and encoder.embed.num_embeddings == 8
