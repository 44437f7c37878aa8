"""The word encoder's prompt splitting: Unicode prompts kept whole, ASCII ones split as before."""

import random
import re
import string

import pytest
import torch

from backbones import load_backbone
from backbones.word_encoder import WordEncoder, WordEncoderConfig, split_words
from steer.cli import SWAP_BACKBONE


def _ascii_split(prompt: str) -> list[str]:
    """The splitting every shipped model was trained with (ASCII prompts only here), less the
    ``'`` at a word's ends, which no shipped vocabulary holds (quotes, as in "a 'violin'")."""
    words = re.findall(r"[a-z0-9\[\]<>_']+", prompt.lower())
    return [word.strip("'") for word in words if word.strip("'")]


def test_quotes_around_a_word_do_not_change_it():
    """"a 'violin'" read the word "'violin'", unknown to the shipped model (<unk>, with a warning)."""
    assert split_words("a 'violin'") == split_words('a "violin"') == ["a", "violin"]
    assert split_words("don't 'n' '' ''rock'n'roll'") == ["don't", "n", "rock'n'roll"]
    assert not any("'" in word for word in load_backbone(str(SWAP_BACKBONE)).model.text_encoder.config.words)


PROMPTS = [
    "a recording of a violin",
    "A recording of a Violin.",
    "a recording of an acoustic guitar",
    "a recording of a church organ",
    "a piano melody",
    "a sks guitar melody",
    "[S] <s1> don't x_y 42!",
    "piano,violin;flute--marimba (trumpet)",
    "\ta  recording\nof a clarinet ",
]


def test_ascii_prompts_split_as_they_always_did():
    """The shipped model's prompts must encode as it was trained: every ASCII character, the
    project's prompts and random ASCII strings split exactly as the old pattern split them."""
    rng = random.Random(0)
    printable = [rng.choices(string.printable, k=rng.randint(0, 40)) for _ in range(2000)]
    for prompt in [*PROMPTS, *string.printable, *("".join(chars) for chars in printable)]:
        assert split_words(prompt) == _ascii_split(prompt), prompt


@pytest.mark.parametrize(
    "prompt, words",
    [
        ("ピアノ", ["ピアノ"]),  # was [], the unconditional prompt, without a word
        ("violín", ["violin"]),  # was ['viol', 'n']
        ("a ﬂute", ["a", "flute"]),  # the ligature: was ['a', 'ute']
        ("ＶＩＯＬＩＮ", ["violin"]),  # full width
        ("naïve CAFÉ", ["naive", "cafe"]),
        ("vi\u0301oli\u0301n", ["violin"]),  # accents as combining marks
        ("हिन्दी गाना", ["हिन्दी", "गाना"]),  # vowel signs are marks: the words stay whole
        ("ガ-ピアノ", ["ガ", "ピアノ"]),  # a Japanese voicing mark is kept
    ],
)
def test_unicode_prompts_keep_their_words(prompt, words):
    assert split_words(prompt) == words


def test_the_shipped_model_warns_about_foreign_words_and_refuses_a_prompt_of_none():
    backbone = load_backbone(str(SWAP_BACKBONE))
    encoder = backbone.model.text_encoder
    ids, _ = encoder.tokenize(["a recording of a violín"])
    assert torch.equal(ids, encoder.tokenize(["a recording of a violin"])[0])
    with pytest.warns(UserWarning, match=r"vocabulary are read as <unk>: \['ピアノ'\]"):
        backbone.encode_prompt(["ピアノ"])
    with pytest.raises(ValueError, match=r"^the prompt '!!!' has no words \(letters or digits\) for this model to read: describe the audio in words$"):
        backbone.encode_prompt(["!!!"])


def test_the_empty_prompt_is_still_the_unconditional_input():
    encoder = WordEncoder(WordEncoderConfig(words=["a"], dim=8, layers=1, heads=2))
    ids, mask = encoder.tokenize(["", "a"])
    assert ids[0, :2].tolist() == [encoder.vocabulary["<bos>"], encoder.vocabulary["<eos>"]]
    assert mask.tolist() == [[1, 1, 0], [1, 1, 1]]


def test_a_mark_on_no_letter_is_dropped_and_other_letters_keep_theirs():
    assert split_words("\u0301abc") == ["abc"]  # was the word "\u0301abc"
    assert split_words("a \u0301 b") == ["a", "b"]
    assert split_words("øresund ピアノ") == ["øresund", "ピアノ"]
