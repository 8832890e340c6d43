"""Tiny offline tokenizers for docstring examples (private).

Docstring examples must run under ``pytest --doctest-modules`` with no hub access and without the real tokenizers
of ``../shared/tokenizers``. :func:`toy_tokenizer` builds a word-level tokenizer in memory that behaves like a
real one where special tokens are concerned (BOS/EOS/UNK/PAD, added tokens, chat templates, ``save_pretrained``).
Tests use the real tokenizers; only examples use this.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

__all__ = ["toy_tokenizer"]

_WORDS = (
    "user", "assistant", "system", "hello", "hi", "there", "what", "is", "the", "capital", "of", "argentina?",
    "buenos", "aires.", "and", "chile?", "santiago.", "###", "answer:", "question:",
)  # fmt: skip


def toy_tokenizer(
    *,
    bos_token: str | None = "<s>",
    eos_token: str | None = "</s>",
    unk_token: str | None = "<unk>",
    pad_token: str | None = None,
    added_tokens: Sequence[str] = (),
    words: Sequence[str] = _WORDS,
    chat_template: str | None = None,
    add_bos: bool = False,
) -> Any:
    """A word-level tokenizer (whitespace split) with the given special tokens, for examples.

    Args:
        bos_token / eos_token / unk_token / pad_token: the special tokens (``None``: not set). Each one given is in
            the vocabulary, before the words.
        added_tokens: more tokens in the vocabulary after the words (reserved slots, chat markers).
        words: the ordinary words. Anything else encodes to UNK (or fails when there is no UNK).
        chat_template: a Jinja chat template, or ``None``.
        add_bos: whether encoding adds BOS in front (as Llama's tokenizers do).

    Returns:
        A ``transformers`` fast tokenizer.

    Example:
        >>> tok = toy_tokenizer(pad_token="</s>")
        >>> tok.pad_token == tok.eos_token, len(tok)
        (True, 23)
        >>> tok("hello there").input_ids
        [6, 8]
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = [t for t in (unk_token, bos_token, eos_token, pad_token) if t is not None]
    vocab: dict[str, int] = {}
    for token in [*specials, *words, *added_tokens]:
        vocab.setdefault(token, len(vocab))
    backend = Tokenizer(models.WordLevel(vocab, unk_token=unk_token))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if add_bos and bos_token is not None:
        backend.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A", pair=f"{bos_token} $A $B", special_tokens=[(bos_token, vocab[bos_token])]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos_token,
        eos_token=eos_token,
        unk_token=unk_token,
        pad_token=pad_token,
    )
    extra = [t for t in added_tokens if t not in specials]
    if extra:
        tokenizer.add_tokens(extra, special_tokens=True)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer
