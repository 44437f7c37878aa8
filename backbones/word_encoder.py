"""A small word-level text encoder for backbones trained from scratch on a closed vocabulary.

Prompts are lower-cased and split on whitespace and punctuation (:func:`split_words`; a prompt of
punctuation alone is refused rather than read as the empty one); each word maps to an embedding
(unknown words to ``<unk>``, with a warning from the backbone), a learned position is added and a
small Transformer encoder mixes them. The empty prompt encodes to ``<bos> <eos>``, the
unconditional input of classifier-free guidance.
"""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

SPECIAL_TOKENS = ("<pad>", "<unk>", "<bos>", "<eos>")


def split_words(prompt: str) -> list[str]:
    """Lower-cased words of a prompt: ``"A recording of a Violin."`` → ``["a", "recording", …]``.

    A word is a run of letters and digits of any script, their marks, and ``_ [ ] < > '``, less
    the ``'`` at its ends (quotes: "a 'violin'" reads as "a violin", as "a \"violin\"" does).
    Compatibility forms are unified first (NFKC: "ﬂute" → "flute", full-width letters → ASCII)
    and accents are taken off the letters a–z ("violín" → "violin"), as the vocabularies here
    are unaccented English; other letters ("ø") and words of other scripts stay whole ("ピアノ",
    read as ``<unk>``); a mark on no letter is dropped. ASCII prompts split as they always did.
    """
    text = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", prompt).lower())
    text = unicodedata.normalize("NFC", "".join(_without_latin_accents(text)))
    words = "".join(char if _in_word(char) else " " for char in text).split()
    return [stripped for word in words if (stripped := word.strip("'"))]


def _without_latin_accents(text: str) -> Iterator[str]:
    """The characters of decomposed ``text`` less the marks on ASCII characters ("i" + "◌́" →
    "i") and on none (a mark at the start)."""
    latin = True
    for char in text:
        if not unicodedata.combining(char):
            latin = char.isascii()
            yield char
        elif not latin:
            yield char


def _in_word(char: str) -> bool:
    return char.isalnum() or char in "_[]<>'" or unicodedata.category(char).startswith("M")


@dataclass
class WordEncoderConfig:
    """Settings of :class:`WordEncoder` (saved as JSON next to its weights)."""

    words: list[str] = field(default_factory=list)
    dim: int = 64
    layers: int = 2
    heads: int = 4
    max_words: int = 16


class WordEncoder(nn.Module):
    """Word embeddings + positions + a Transformer encoder.

    Args:
        config: vocabulary (special tokens are added in front) and sizes.

    Shapes: :meth:`tokenize` gives ids and a mask ``(B, L)``; :meth:`forward` maps them to states
    ``(B, L, dim)``.
    """

    def __init__(self, config: WordEncoderConfig) -> None:
        super().__init__()
        self.config = config
        self.vocabulary = {w: i for i, w in enumerate((*SPECIAL_TOKENS, *config.words))}
        if len(self.vocabulary) != len(SPECIAL_TOKENS) + len(config.words):
            raise ValueError("the word list has duplicates or special tokens")
        self.embed = nn.Embedding(len(self.vocabulary), config.dim)
        self.position = nn.Parameter(torch.zeros(config.max_words + 2, config.dim))
        layer = nn.TransformerEncoderLayer(
            config.dim, config.heads, 4 * config.dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, config.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)

    def add_words(self, words: Sequence[str], *, init: str | None = None) -> list[int]:
        """Grow the vocabulary by ``words`` and return their ids (used to learn a concept's token).

        The new embedding rows start at the embedding of the word ``init``, or at the mean of the
        existing word rows (specials excluded) when ``init`` is ``None``; all other rows and
        modules are unchanged, so prompts without the new words encode exactly as before.
        :attr:`config` is replaced by one listing the new words, so that a saved encoder
        reloads with the grown table.

        Example:
            >>> encoder = WordEncoder(WordEncoderConfig(words=["a", "guitar"], dim=8, layers=1, heads=2))
            >>> encoder.add_words(["sks"], init="guitar")
            [6]
            >>> torch.equal(encoder.embed.weight[6], encoder.embed.weight[5]), encoder.config.words
            (True, ['a', 'guitar', 'sks'])
        """
        words = list(words)
        for word in words:
            if split_words(word) != [word]:
                raise ValueError(f"{word!r} is not one lower-case word as prompts are split into it")
            if word in self.vocabulary:
                raise ValueError(f"{word!r} is already in the vocabulary")
        if len(set(words)) != len(words):
            raise ValueError(f"the new words have duplicates: {words}")
        if init is not None and init not in self.vocabulary:
            raise ValueError(f"cannot initialise from {init!r}: it is not in the vocabulary")
        old = self.embed.weight
        with torch.no_grad():
            if init is not None:
                start = old[self.vocabulary[init]]
            elif len(old) > len(SPECIAL_TOKENS):
                start = old[len(SPECIAL_TOKENS) :].mean(dim=0)
            else:
                start = old.mean(dim=0)
            weight = torch.cat([old, start.expand(len(words), -1)])
        first = len(old)
        self.embed = nn.Embedding.from_pretrained(weight.clone(), freeze=not old.requires_grad)
        self.config = dataclasses.replace(self.config, words=[*self.config.words, *words])
        self.vocabulary.update({w: first + i for i, w in enumerate(words)})
        return list(range(first, first + len(words)))

    def unknown_words(self, prompt: str) -> list[str]:
        return [w for w in split_words(prompt) if w not in self.vocabulary]

    def unread_words(self, prompt: str) -> list[str]:
        """The words of ``prompt`` past :attr:`WordEncoderConfig.max_words`, which
        :meth:`tokenize` leaves out."""
        return split_words(prompt)[self.config.max_words :]

    def tokenize(self, prompts: Sequence[str]) -> tuple[Tensor, Tensor]:
        """Token ids and attention mask (1 = word), both ``(B, L)`` with L the longest + 2."""
        rows = []
        for prompt in prompts:
            words = split_words(prompt)[: self.config.max_words]
            if not words and prompt.strip():  # the empty prompt is the unconditional input
                raise ValueError(
                    f"the prompt {prompt!r} has no words (letters or digits) for this model to read: "
                    "describe the audio in words"
                )
            unk = self.vocabulary["<unk>"]
            rows.append(
                [self.vocabulary["<bos>"], *(self.vocabulary.get(w, unk) for w in words), self.vocabulary["<eos>"]]
            )
        length = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), length, dtype=torch.long)
        mask = torch.zeros(len(rows), length, dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return ids.to(self.embed.weight.device), mask.to(self.embed.weight.device)

    def forward(self, ids: Tensor, mask: Tensor) -> Tensor:
        h = self.embed(ids) + self.position[: ids.shape[1]]
        h = self.encoder(h, src_key_padding_mask=mask == 0)
        return self.norm(h) * mask[..., None]
