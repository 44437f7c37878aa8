"""A new word for open-vocabulary text encoders: textual inversion (Gal et al., 2022,
https://arxiv.org/abs/2208.01618) without touching the base model.

Each text path (a tokenizer and the input embedding of the encoder it feeds) gets a copy of its
tokenizer that knows the token, and one learnt embedding row. While :meth:`NewToken.active` is
entered, hooks on the encoders' input embeddings replace the output at the token's positions with
that row; outside it the encoders are exactly the base's (the hooks are removed), so the base model
and ε' share every module.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from transformers import AddedToken


def _known_word(tokenizer: Any, token: str) -> bool:
    """Whether ``tokenizer`` already reads ``token``, as a word of a prompt, as one word of its
    vocabulary: the bare string, or the one piece it becomes after a space (SentencePiece's
    ``▁piano``, byte-level BPE's ``Ġpiano``), which a new token would take from every prompt."""
    if token in tokenizer.get_vocab():
        return True
    pieces = tokenizer.tokenize(" " + token)
    return len(pieces) == 1 and pieces[0] != tokenizer.unk_token


class NewToken(nn.Module):
    """One new token's input embeddings, one row per text path.

    Args:
        token: the new word (``"sks"``); every tokenizer must not know it yet.
        paths: text path name (a pipeline's tokenizer component) → (tokenizer, the input
            embedding module its ids go to).
        init_word: initial rows are the mean embedding of this word's tokens (Gal et al. start from
            a word describing the concept); ``None`` starts from the mean of all rows.

    Attributes:
        tokenizers: the copied tokenizers that know ``token``, by path.
        rows: the learnt embeddings ``(dim,)`` by path (parameters).
    """

    def __init__(self, token: str, paths: Mapping[str, tuple[Any, nn.Embedding]], *, init_word: str | None) -> None:
        super().__init__()
        self.token = token
        self.tokenizers: dict[str, Any] = {}
        self.token_ids: dict[str, int] = {}
        self._embeddings: dict[str, nn.Embedding] = {}
        self.rows = nn.ParameterDict()
        for name, (tokenizer, embedding) in paths.items():
            tokenizer = copy.deepcopy(tokenizer)
            # A whole word only ("desks" keeps its own tokens), taking the space before it along.
            word = AddedToken(token, single_word=True, lstrip=True)
            if _known_word(tokenizer, token) or tokenizer.add_tokens([word]) != 1:
                raise ValueError(
                    f"the token {token!r} is already a word of the base model's {name!r}; "
                    "textual inversion needs a new word (e.g. 'sks')"
                )
            self.tokenizers[name] = tokenizer
            self.token_ids[name] = tokenizer.convert_tokens_to_ids(token)
            self._embeddings[name] = embedding
            weight = embedding.weight.detach()
            ids = tokenizer(init_word, add_special_tokens=False).input_ids if init_word else []
            init = weight[[i for i in ids if i < len(weight)]] if ids else weight
            self.rows[name] = nn.Parameter(init.float().mean(0).clone(), requires_grad=False)

    def load(self, rows: Mapping[str, Tensor]) -> None:
        """Set the rows from saved weights (by path name); a clear error if they do not fit."""
        if set(rows) != set(self.rows):
            raise ValueError(f"the concept's token embeddings are for {sorted(rows)}, this backbone has {sorted(self.rows)}")
        with torch.no_grad():
            for name, row in rows.items():
                if row.shape != self.rows[name].shape:
                    raise ValueError(
                        f"the concept's {name} token embedding has shape {tuple(row.shape)}, this backbone "
                        f"needs {tuple(self.rows[name].shape)}: it was learnt on another base model"
                    )
                self.rows[name].copy_(row)

    @contextmanager
    def active(self) -> Iterator[None]:
        """Route the token's id to its learnt row in every path (differentiable); hooks removed on exit."""
        with ExitStack() as stack:
            for name, embedding in self._embeddings.items():
                for handle in self._hooks(embedding, self.token_ids[name], self.rows[name]):
                    stack.callback(handle.remove)
            yield

    @staticmethod
    def _hooks(embedding: nn.Embedding, token_id: int, row: nn.Parameter) -> list:
        where: list[Tensor] = []

        def before(module: nn.Module, args: tuple) -> tuple:
            ids, *rest = args
            where.append(ids == token_id)
            # The id may lie past the base table (a new row): look up row 0 there, replaced below.
            return (ids.masked_fill(where[-1], 0), *rest)

        def after(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
            mask = where.pop()
            return torch.where(mask[..., None], row.to(output), output)

        return [embedding.register_forward_pre_hook(before), embedding.register_forward_hook(after)]
