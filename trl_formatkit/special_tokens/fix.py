""":func:`fix_special_tokens`: the chapter's ``modify_tokenizer`` done right, and the plan the audit quotes."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import FormatKitTypeError, FormatKitValueError
from .probe import bos_writers
from .vocab import extra_special_tokens as existing_extras
from .vocab import (
    Vocab,
    add_special_tokens,
    pad_candidate,
    record_new_ids,
    require_tokenizer,
    tok,
    tokenizer_name,
)

__all__ = ["FixSummary", "fix_special_tokens"]

logger = logging.getLogger("trl_formatkit")


@dataclass(frozen=True)
class Plan:
    """What :func:`fix_special_tokens` would change: ``changes`` is ``{name: (old, new)}``, ``reasons`` why."""

    bos: str | None
    changes: dict[str, tuple[str | None, str | None]]
    reasons: dict[str, str]


def _check_eos(tokenizer: Any, vocab: Vocab) -> str:
    eos = tok(tokenizer.eos_token)
    if eos is None:
        raise FormatKitValueError(
            f"tokenizer {tokenizer_name(tokenizer)!r} has no EOS token, so there is nothing to keep and nothing to "
            "stop on; set one first, e.g. tokenizer.add_special_tokens({'eos_token': '</s>'}) with the token your "
            "model was trained to end texts with, then call fix_special_tokens(tokenizer) again"
        )
    if eos not in vocab:
        raise FormatKitValueError(
            f"tokenizer {tokenizer_name(tokenizer)!r} has EOS {eos!r}, which is not in its vocabulary (it encodes "
            f"to UNK); add it with tokenizer.add_special_tokens({{'eos_token': {eos!r}}}) or set an EOS from the "
            "vocabulary"
        )
    return eos


def _choose_pad(tokenizer: Any, vocab: Vocab, *, pad_token: str | None, unk: str | None, eos: str) -> tuple[str, str]:
    old_pad = tok(tokenizer.pad_token)
    if pad_token is not None:
        if pad_token == eos:
            raise FormatKitValueError(
                f"pad_token={pad_token!r} is the EOS token: a collator that masks the pad id would never train the "
                "model to stop; leave pad_token=None to let fix_special_tokens choose (UNK, then a reserved token, "
                "then a new '<pad>')"
            )
        return pad_token, "chosen by the caller"
    if old_pad is not None and old_pad != eos and old_pad in vocab:
        return old_pad, "kept: it already differs from EOS"
    return pad_candidate(tokenizer, vocab, unk=unk, eos=eos)


def _not_eos(name: str, value: str | None, eos: str) -> str | None:
    if value is not None and value == eos:
        raise FormatKitValueError(
            f"{name}={value!r} is the EOS token; choose a different token (EOS must only mark the end)"
        )
    return value


def plan_fix(
    tokenizer: Any,
    pad_token: str | None = None,
    unk_token: str | None = None,
    alternatives: tuple[str | None, str] = ("<|im_start|>", "<unk>"),
) -> Plan:
    """The changes :func:`fix_special_tokens` makes, without making them (the audit quotes them as fixes).

    ``alternatives`` is ``(alternative_bos_token, alternative_unk_token)``.
    """
    alternative_bos_token, alternative_unk_token = alternatives
    vocab = Vocab(tokenizer)
    eos = _check_eos(tokenizer, vocab)
    old_bos, old_unk, old_pad = tok(tokenizer.bos_token), tok(tokenizer.unk_token), tok(tokenizer.pad_token)
    bos, unk = old_bos, (unk_token if unk_token is not None else old_unk)
    reasons = {}
    writers = bos_writers(tokenizer) if bos == eos else []
    if writers:  # a BOS nothing writes is left alone: no token invented
        bos, reasons["bos_token"] = _not_eos("alternative_bos_token", alternative_bos_token, eos), (
            f"BOS was EOS and {' and '.join(writers)} writes it"
        )
    if unk == eos:
        unk, reasons["unk_token"] = _not_eos("alternative_unk_token", alternative_unk_token, eos), "UNK was EOS"
    pad, reasons["pad_token"] = _choose_pad(tokenizer, vocab, pad_token=pad_token, unk=unk, eos=eos)
    changes = {
        name: (old, new)
        for name, old, new in (("bos_token", old_bos, bos), ("unk_token", old_unk, unk), ("pad_token", old_pad, pad))
        if old != new
    }
    return Plan(bos=bos, changes=changes, reasons={k: v for k, v in reasons.items() if k in changes})


@dataclass(frozen=True)
class FixSummary:
    """What :func:`fix_special_tokens` changed.

    Attributes:
        added: tokens new to the vocabulary, ``{token: id}`` (their embedding rows must be added and trained).
        moved: special tokens that now point elsewhere, ``{"pad_token": (old, new)}``.
        reasons: why each moved token was chosen.
    """

    added: dict[str, int] = field(default_factory=dict)
    moved: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    @property
    def needs_resize(self) -> bool:
        """True when the vocabulary grew: call ``resize_embeddings(model, tokenizer)`` before training."""
        return bool(self.added)

    def __str__(self) -> str:
        if not self.added and not self.moved:
            return "fix_special_tokens changed nothing"
        parts = [
            f"{name}: {old!r} -> {new!r}" + (f" ({self.reasons[name]})" if name in self.reasons else "")
            for name, (old, new) in self.moved.items()
        ]
        if self.added:
            tokens = ", ".join(f"{t!r} (id {i})" for t, i in self.added.items())
            parts.append(
                f"added {len(self.added)} token(s) to the vocabulary: {tokens}; call resize_embeddings(model, "
                "tokenizer) before training (it returns the new ids: train their rows, see new_token_lora_kwargs)"
            )
        return "fix_special_tokens: " + "; ".join(parts)


def _token_lists(**lists: Sequence[str] | None) -> None:
    for name, value in lists.items():
        if isinstance(value, str):
            raise FormatKitTypeError(f"{name} must be a list of strings, got the string {value!r}; use [{value!r}]")


def fix_special_tokens(
    tokenizer: Any,
    *,
    alternative_bos_token: str | None = "<|im_start|>",
    alternative_unk_token: str = "<unk>",
    pad_token: str | None = None,
    unk_token: str | None = None,
    extra_special_tokens: Sequence[str] | None = None,
    special_tokens: Sequence[str] | None = None,
    tokens: Sequence[str] | None = None,
    return_summary: bool = False,
) -> Any:
    """Make PAD (and, where they are used, BOS and UNK) distinct from EOS, in place: the chapter's
    ``modify_tokenizer``, done right.

    - EOS is kept.
    - PAD, when missing or equal to EOS: the UNK token where it exists and differs from EOS (the chapter: PAD
      and UNK may be the same); else an existing padding token (``<pad>``, ``<|finetune_right_pad_id|>``, ...);
      else an unused reserved/placeholder token (Llama-3's ``<|reserved_special_token_N|>``, the highest id);
      else a new ``<pad>`` token. A PAD that already differs from EOS is kept.
    - BOS equal to EOS becomes ``alternative_bos_token`` (``None`` unsets BOS) only where something writes BOS
      (the chat template or the tokenizer's post-processor, as OPT's does); a BOS nothing writes (GPT-2, Qwen2)
      is left alone, so no token is invented. UNK equal to EOS becomes ``alternative_unk_token``. A missing UNK
      stays missing unless ``unk_token`` is given (byte-level BPE tokenizers such as GPT-2's never produce one).
    - ``extra_special_tokens`` are added as single, never-split tokens (a response template such as
      ``"##[YODA]##>"``), next to the existing ones; ``tokens`` are added as ordinary tokens.

    Existing tokens are reused wherever one serves, so the vocabulary only grows by tokens that did not exist.
    The ids of new tokens are remembered on the tokenizer (and in its ``save_pretrained`` folder), and
    :func:`resize_embeddings` returns them so you can train them. What changed is logged on the
    ``"trl_formatkit"`` logger: a warning when the vocabulary grew (resize the embeddings), else at INFO level;
    ``return_summary=True`` returns it as a :class:`FixSummary` too.

    Args:
        tokenizer: the tokenizer to fix (changed in place and returned).
        alternative_bos_token: the BOS to use where BOS equals EOS and is written (the chapter's ``<|im_start|>``).
        alternative_unk_token: the UNK to use where UNK equals EOS.
        pad_token: use this PAD instead of choosing one (must not be EOS).
        unk_token: set this UNK (also when there was none).
        extra_special_tokens: tokens to add as extra special tokens.
        special_tokens: the chapter's name for ``extra_special_tokens`` (both may be given).
        tokens: ordinary tokens to add.
        return_summary: return ``(tokenizer, FixSummary)`` instead of the tokenizer.

    Returns:
        The same tokenizer; with ``return_summary=True``, ``(tokenizer, summary)``.

    Raises:
        FormatKitValueError: the tokenizer has no EOS (or one outside its vocabulary), or a token you chose is EOS.
        FormatKitTypeError: ``tokenizer`` is not a tokenizer, or a token list is a plain string.

    Example:
        >>> from trl_formatkit._toy import toy_tokenizer
        >>> tok = fix_special_tokens(toy_tokenizer(pad_token="</s>"))
        >>> tok.pad_token, tok.pad_token_id, tok.eos_token
        ('<unk>', 0, '</s>')
        >>> gpt2_like = toy_tokenizer(bos_token="</s>", unk_token=None, added_tokens=["<|reserved_0|>"])
        >>> _, summary = fix_special_tokens(gpt2_like, return_summary=True)
        >>> gpt2_like.pad_token, gpt2_like.bos_token, summary.added   # BOS is never written: left alone
        ('<|reserved_0|>', '</s>', {})
        >>> _, summary = fix_special_tokens(toy_tokenizer(unk_token=None), return_summary=True)
        >>> summary.added, summary.moved, summary.needs_resize
        ({'<pad>': 22}, {'pad_token': (None, '<pad>')}, True)
    """
    require_tokenizer(tokenizer)
    _token_lists(extra_special_tokens=extra_special_tokens, special_tokens=special_tokens, tokens=tokens)
    plan = plan_fix(tokenizer, pad_token, unk_token, (alternative_bos_token, alternative_unk_token))
    start = len(tokenizer)
    named = {name: new for name, (_, new) in plan.changes.items() if new is not None}
    extras = list(dict.fromkeys([*(extra_special_tokens or ()), *(special_tokens or ())]))
    add_special_tokens(tokenizer, named, [t for t in extras if t not in existing_extras(tokenizer)])
    if "bos_token" in plan.changes and plan.bos is None:
        tokenizer.bos_token = None
    if tokens:
        tokenizer.add_tokens(list(tokens))
    record_new_ids(tokenizer, start)
    added = {str(t): i for t, i in zip(tokenizer.convert_ids_to_tokens(list(range(start, len(tokenizer)))),
                                        range(start, len(tokenizer)), strict=True)}  # fmt: skip
    summary = FixSummary(added=added, moved=plan.changes, reasons=plan.reasons)
    if summary.added or summary.moved:
        logger.log(logging.WARNING if summary.needs_resize else logging.INFO, "%s", summary)
    return (tokenizer, summary) if return_summary else tokenizer
