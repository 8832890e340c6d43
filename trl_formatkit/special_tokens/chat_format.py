""":func:`setup_chat_format`: trl's removed function, restored without PAD = EOS and without shrinking."""

from __future__ import annotations

from typing import Any, Literal

from ..errors import FormatKitValueError
from .chat_templates import NAMED_TEMPLATES, chatml
from .embeddings import check_resizable, resize_embeddings
from .vocab import (
    Vocab,
    add_special_tokens,
    extra_special_tokens,
    pad_candidate,
    record_new_ids,
    require_tokenizer,
    tok,
)

__all__ = ["setup_chat_format"]


def setup_chat_format(
    model: Any,
    tokenizer: Any,
    format: Literal["chatml"] | None = "chatml",
    resize_to_multiple_of: int | None = None,
) -> tuple[Any, Any]:
    """trl's removed ``setup_chat_format``, restored without its flaws: never PAD = EOS, never shrinks.

    As trl 0.19: adds ``<|im_start|>`` (BOS) and ``<|im_end|>`` (EOS) as special tokens, sets the ChatML
    template, resizes the embeddings and syncs the model's token ids; raises if the tokenizer already has a chat
    template. Unlike trl: PAD is never EOS (an existing PAD that differs from the new EOS is kept, else UNK, else
    an unused reserved token, else the former EOS, else a new ``<pad>``); the embeddings only grow (trl resized
    OPT's 50272 rows down to 50267); the size stays a multiple of ``resize_to_multiple_of``, by default the
    largest power of two dividing the current size; the template has ``{% generation %}`` markers. The ids of
    the new tokens: ``resize_embeddings(model, tokenizer)`` (a second call changes nothing else).

    Args:
        model: a transformers model (PEFT-wrapped or 4-bit is fine).
        tokenizer: its tokenizer, without a chat template.
        format: ``"chatml"`` (the only format, as in trl).
        resize_to_multiple_of: round the grown embedding size up to a multiple of this.

    Returns:
        ``(model, tokenizer)``, both changed in place.

    Raises:
        FormatKitValueError: the tokenizer already has a chat template, or ``format`` is unknown.
        FormatKitTypeError: the model has no input embeddings (checked before anything changes).

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from trl_formatkit._toy import toy_tokenizer
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=8, intermediate_size=16,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        >>> model, tok = setup_chat_format(model, toy_tokenizer())
        >>> tok.eos_token, tok.pad_token, model.get_input_embeddings().num_embeddings
        ('<|im_end|>', '<unk>', 64)
    """
    require_tokenizer(tokenizer)
    if getattr(tokenizer, "chat_template", None) is not None:
        raise FormatKitValueError(
            "the tokenizer already has a chat template (trl's setup_chat_format refused this too); to replace it, "
            "set tokenizer.chat_template = None first, or keep it and call fix_special_tokens(tokenizer) and "
            "resize_embeddings(model, tokenizer)"
        )
    formats = {name: entry.tokens for name, entry in NAMED_TEMPLATES.items() if entry.tokens is not None}
    if format not in formats:
        raise FormatKitValueError(f"format {format!r} is not available; use one of {sorted(formats)}")
    check_resizable(model)  # before touching the tokenizer
    bos, eos = formats[format]
    old_eos = tok(tokenizer.eos_token)
    start = len(tokenizer)
    add_special_tokens(
        tokenizer,
        {"bos_token": bos, "eos_token": eos},
        [t for t in (bos, eos) if t not in extra_special_tokens(tokenizer)],
    )
    vocab = Vocab(tokenizer)
    unk, pad = tok(tokenizer.unk_token), tok(tokenizer.pad_token)
    if unk == eos:  # pragma: no cover - only with a tokenizer whose UNK was '<|im_end|>'
        unk = None
    if pad is None or pad in (eos, bos):
        pad, _ = pad_candidate(tokenizer, vocab, unk=unk, eos=eos, also=[old_eos])
        add_special_tokens(tokenizer, {"pad_token": pad})
    tokenizer.chat_template = chatml(bos, eos, generation_markers=True)
    record_new_ids(tokenizer, start)
    resize_embeddings(model, tokenizer, pad_to_multiple_of=resize_to_multiple_of)
    return model, tokenizer
