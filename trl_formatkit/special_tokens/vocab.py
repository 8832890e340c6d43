"""Vocabulary helpers shared by the audit, the fix and the templates: lookups, special-token sets, PAD choice.

Imports nothing heavy: each function takes the tokenizer it is given.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import FormatKitTypeError

# Existing tokens that are meant for padding, by name (checked before reserved slots).
PAD_NAMES = (
    "<pad>", "<PAD>", "[PAD]", "<|pad|>", "<|padding|>", "<|pad_token|>", "<|finetune_right_pad_id|>",
)  # fmt: skip
# Added tokens that are unused slots: Llama-3's <|reserved_special_token_N|>, Phi-3's <|placeholderN|>,
# Gemma's <unusedN>, Qwen's [PADN] / <|extra_N|>.
RESERVED_RE = re.compile(r"reserved|placeholder|unused|^\[PAD\d+\]$|^<\|extra_\d+\|>$|^<pad_?\d+>$", re.IGNORECASE)
SPECIAL_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")


def require_tokenizer(tokenizer: Any) -> None:
    """Raise a clear error when ``tokenizer`` is not a Hugging Face tokenizer (a path, a processor, ...)."""
    missing = [a for a in ("convert_tokens_to_ids", "add_special_tokens", "get_vocab") if not hasattr(tokenizer, a)]
    if missing or not hasattr(tokenizer, "__len__"):
        raise FormatKitTypeError(
            f"expected a Hugging Face tokenizer (AutoTokenizer.from_pretrained(...)), got {type(tokenizer).__name__}"
            f" without {', '.join(missing) or '__len__'}; pass the tokenizer, not a processor or a string"
        )


class Vocab(Mapping):
    """Token -> id lookups without building the whole vocabulary dict (150k entries cost ~0.2 s)."""

    def __init__(self, tokenizer: Any) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._lookup = getattr(backend, "token_to_id", None)
        self._tokenizer = tokenizer
        self._dict: dict[str, int] | None = None if callable(self._lookup) else tokenizer.get_vocab()

    def get(self, token: Any, default: Any = None) -> Any:
        if self._dict is not None:
            return self._dict.get(token, default)
        if not isinstance(token, str):
            return default
        token_id = self._lookup(token)  # type: ignore[misc]
        return default if token_id is None else int(token_id)

    def __getitem__(self, token: str) -> int:
        token_id = self.get(token)
        if token_id is None:
            raise KeyError(token)
        return token_id

    def __contains__(self, token: object) -> bool:
        return self.get(token) is not None

    def _full(self) -> dict[str, int]:
        if self._dict is None:
            self._dict = self._tokenizer.get_vocab()
        return self._dict

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._full())

    def __len__(self) -> int:
        return len(self._full())


def tokenizer_name(tokenizer: Any) -> str:
    """The tokenizer's folder or hub name, for messages."""
    path = str(getattr(tokenizer, "name_or_path", "") or "")
    return path.rstrip("/").rsplit("/", 1)[-1] or type(tokenizer).__name__


def tok(value: Any) -> str | None:
    """A special token as a plain string (transformers may hand out ``AddedToken``), or None."""
    return None if value is None else str(value)


def extra_special_tokens(tokenizer: Any) -> list[str]:
    """The extra (additional) special tokens, on transformers 4 and 5."""
    for attr in ("extra_special_tokens", "additional_special_tokens"):
        try:
            value = getattr(tokenizer, attr)
        except AttributeError:
            continue
        if isinstance(value, dict):  # v5 model-specific named tokens
            return [str(v) for v in value.values()]
        if value:
            return [str(v) for v in value]
    return []


def special_ids(tokenizer: Any) -> set[int]:
    """Ids of every special token, named or added."""
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    ids.update(i for i, token in decoder.items() if getattr(token, "special", False))
    return {int(i) for i in ids if i is not None}


def template_source(tokenizer: Any) -> str | None:
    """The chat template's Jinja source (several named templates joined), or None."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates
        return "\n".join(str(t) for t in template.values())
    return template


def used_tokens(tokenizer: Any) -> set[str]:
    """Tokens that already mean something: named special tokens, extra special tokens, tokens the template uses."""
    used = {
        str(getattr(tokenizer, attr))
        for attr in ("bos_token", "eos_token", "unk_token", "sep_token", "cls_token", "mask_token", "pad_token")
        if getattr(tokenizer, attr, None) is not None
    }
    used.update(extra_special_tokens(tokenizer))
    template = template_source(tokenizer)
    if template:
        decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        used.update(str(t) for t in decoder.values() if str(t) in template)
    return used


def add_special_tokens(tokenizer: Any, named: Mapping[str, str], extras: Sequence[str] = ()) -> None:
    """``add_special_tokens`` that extends (never replaces) the extra special tokens, on transformers 4 and 5."""
    params = inspect.signature(tokenizer.add_special_tokens).parameters
    special: dict[str, Any] = dict(named)
    kwargs: dict[str, Any] = {}
    if extras:
        if "replace_extra_special_tokens" in params:
            special["extra_special_tokens"] = list(extras)
            kwargs["replace_extra_special_tokens"] = False
        else:  # transformers 4.x
            special["additional_special_tokens"] = list(extras)
            kwargs["replace_additional_special_tokens"] = False
    if special:
        tokenizer.add_special_tokens(special, **kwargs)


def pad_candidate(
    tokenizer: Any, vocab: Mapping[str, int], *, unk: str | None, eos: str, also: Sequence[str | None] = ()
) -> tuple[str, str]:
    """The token the fix would use as PAD, and why (the chapter's order, plus reserved slots)."""
    if unk is not None and unk != eos:
        return unk, "the UNK token; PAD and UNK may be the same"
    used = used_tokens(tokenizer) | {eos}
    for name in PAD_NAMES:
        if name in vocab and name not in used:
            return name, "an existing padding token"
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    reserved = [(i, str(t)) for i, t in decoder.items() if RESERVED_RE.search(str(t)) and str(t) not in used]
    if reserved:
        # the highest id: vendors hand out reserved slots from the low end (Llama-3's <|eot_id|> was one)
        _, token = max(reserved)
        return token, "an unused reserved token"
    for token in also:
        if token is not None and token in vocab and token not in used:
            return token, "the former EOS token, no longer used to stop"
    return "<pad>", "a new token: no UNK and no unused reserved token to reuse"


# The ids trl-formatkit added to a tokenizer (their embedding rows are untrained). Kept in ``init_kwargs`` too, so
# ``save_pretrained`` writes it into tokenizer_config.json and ``from_pretrained`` brings it back.
NEW_IDS_KEY = "formatkit_new_token_ids"


def record_new_ids(tokenizer: Any, start: int) -> None:
    """Remember the ids from ``start`` to the end of the vocabulary as added by trl-formatkit."""
    new = set(range(start, len(tokenizer)))
    if new:
        ids = sorted(set(recorded_new_ids(tokenizer)) | new)
        object.__setattr__(tokenizer, "_" + NEW_IDS_KEY, ids)
        init_kwargs = getattr(tokenizer, "init_kwargs", None)
        if isinstance(init_kwargs, dict):
            init_kwargs[NEW_IDS_KEY] = ids


def recorded_new_ids(tokenizer: Any) -> list[int]:
    """The ids :func:`record_new_ids` remembered, in this process or in the folder the tokenizer was loaded from."""
    ids = set(getattr(tokenizer, "_" + NEW_IDS_KEY, ()) or ())
    init_kwargs = getattr(tokenizer, "init_kwargs", None)
    if isinstance(init_kwargs, dict):
        ids.update(int(i) for i in init_kwargs.get(NEW_IDS_KEY, ()) or ())
    return sorted(ids)
