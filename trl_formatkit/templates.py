"""Templates as the user gives them (text or ids) turned into the token-id sequences to search for.

A template's text tokenizes differently inside text than on its own (after a newline, a space, a special token;
merged with the whitespace after it by byte-level BPE), so :func:`template_variants` returns every id sequence
the template can turn into; :mod:`trl_formatkit.masking` finds them in the ids. Imported through
``trl_formatkit.masking`` too, where these names have always been.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import FormatKitTypeError, FormatKitValueError

__all__ = ["TemplateSpec", "as_template_list", "template_variants"]

# A template as the user gives it: a string, a list of token ids, or several of either.
TemplateSpec = str | Sequence[int] | Sequence[str | Sequence[int]]

# Text placed before and after a template to see how it tokenizes in context. Before: start of text, after a
# newline, a blank line, a space, a word, punctuation (and the tokenizer's own special tokens, added at run time).
_PREFIX_CONTEXTS = (
    "", "\n", "\n\n", " ", ".", ":", "x", "x\n", "x\n\n", "x ", "x.", "x.\n", "x:", "x: ", "x!", "x?", "x,", "x)",
)  # fmt: skip
# After: end of text, a space and a word, a newline, a blank line; a word right after only where the template
# ends in whitespace (elsewhere it would glue the template's last characters to a word no real text has).
_SUFFIX_CONTEXTS = ("", " x", "\n", "\nx", " ", "\n\n", "\n\nx")


def as_template_list(template: TemplateSpec | None, name: str = "template") -> list[str | tuple[int, ...]]:
    """Normalise a template argument to a list of templates (strings or tuples of ids).

    A string or a flat list of ints is *one* template; a list of strings or of id lists is several.

    Example:
        >>> as_template_list("<|assistant|>")
        ['<|assistant|>']
        >>> as_template_list([32001])
        [(32001,)]
        >>> as_template_list(["<|user|>", [32006]])
        ['<|user|>', (32006,)]
        >>> as_template_list(None)
        []
    """
    if template is None:
        return []
    if isinstance(template, str):
        return [template]
    if hasattr(template, "tolist"):  # numpy array / torch tensor of ids
        template = template.tolist()
    if not isinstance(template, Sequence):
        raise FormatKitTypeError(
            f"{name} must be a string, a list of token ids, or a list of those; got {type(template).__name__}: "
            f"{template!r}"
        )
    items = list(template)
    if not items:
        raise FormatKitValueError(f"{name} is empty ({template!r}): give the template text or its token ids")
    if all(_is_int(x) for x in items):
        return [tuple(int(x) for x in items)]
    out: list[str | tuple[int, ...]] = []
    for item in items:
        if isinstance(item, str):
            out.append(item)
        elif hasattr(item, "tolist") or isinstance(item, Sequence):
            ids = item.tolist() if hasattr(item, "tolist") else list(item)
            if not ids or not all(_is_int(x) for x in ids):
                raise FormatKitTypeError(
                    f"{name} contains {item!r}, which is neither a string nor a non-empty list of int token ids"
                )
            out.append(tuple(int(x) for x in ids))
        else:
            raise FormatKitTypeError(
                f"{name} mixes token ids and other values ({template!r}); give one list of ids, or a list of "
                "templates (strings or id lists)"
            )
    return out


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def template_variants(tokenizer: Any, template: str, *, match_in_context: bool = True) -> list[tuple[int, ...]]:
    """Token-id sequences a template string can turn into, first the exact encoding.

    ``match_in_context=False`` gives only ``tokenizer.encode(template, add_special_tokens=False)``, which is what
    trl 0.19 searched for. The default adds the ids the template's characters get *inside* text: after a newline,
    a space, a word or a special token, and before the text that follows. A token that straddles the start of the
    template (a merged ``\\n\\n``, SentencePiece's ``▁``) is kept in that variant; a token that straddles its end
    (trailing whitespace merged into the answer's first word) is left out, so the answer is never masked; so is
    a token where the template's leading whitespace merged with the text before it (Qwen2's ``".\\n"``). A token
    where the template's last characters merged with *whitespace* that follows (byte-level BPE's ``":\\n"`` after
    ``"### Response:"``, or ``":\\n\\n"`` before an answer that starts with a newline) is kept: the merged token
    counts as template, so that whitespace is never trained.

    Args:
        tokenizer: a Hugging Face tokenizer (fast tokenizers give exact offsets; slow ones fall back to prefix
            differences).
        template: the template text, for example ``"### Assistant:"``.
        match_in_context: also return in-context variants.

    Returns:
        Distinct, non-empty id tuples, the exact encoding first.

    Raises:
        FormatKitValueError: the template encodes to no tokens.

    Example:
        >>> from tokenizers import Tokenizer, models, pre_tokenizers
        >>> from transformers import PreTrainedTokenizerFast
        >>> vocab = {"[UNK]": 0, "Answer": 1, ":": 2, "Hi": 3, ".": 4, "x": 5}
        >>> backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
        >>> backend.pre_tokenizer = pre_tokenizers.Whitespace()
        >>> tok = PreTrainedTokenizerFast(tokenizer_object=backend)
        >>> template_variants(tok, "Answer:")
        [(1, 2)]
    """
    exact = tuple(tokenizer.encode(template, add_special_tokens=False))
    if not exact:
        raise FormatKitValueError(
            f"template {template!r} encodes to no tokens with {type(tokenizer).__name__}; give a template with "
            "visible text, or its token ids"
        )
    variants = [exact]
    if not match_in_context:
        return variants
    prefixes = list(_PREFIX_CONTEXTS)
    for special in (getattr(tokenizer, "eos_token", None), getattr(tokenizer, "bos_token", None)):
        if isinstance(special, str) and special:
            prefixes += [special, special + "\n"]
    for prefix in prefixes:
        for suffix in _SUFFIX_CONTEXTS + (("x",) if template[-1:].isspace() else ()):
            variants += [ids for ids in _ids_covering(tokenizer, prefix, template, suffix) if ids not in variants]
    return variants


def _ids_covering(tokenizer: Any, prefix: str, template: str, suffix: str) -> list[tuple[int, ...]]:
    """Ids of the tokens that cover ``template`` inside ``prefix + template + suffix`` (none, one, or two: with
    and without a last token that merged the template's end with the whitespace after it)."""
    start, end = len(prefix), len(prefix) + len(template)
    text = prefix + template + suffix
    try:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        ids = enc["input_ids"]
    except (NotImplementedError, ValueError, TypeError, KeyError):
        offsets = None
    if offsets is None:  # slow tokenizer: the template's ids are what the prefix's encoding does not explain
        full = tokenizer.encode(text, add_special_tokens=False)
        head = tokenizer.encode(prefix, add_special_tokens=False) if prefix else []
        tail = tokenizer.encode(suffix, add_special_tokens=False) if suffix else []
        if full[: len(head)] != head or (tail and full[len(full) - len(tail) :] != tail):
            return []
        core = full[len(head) : len(full) - len(tail)]
        return [tuple(core)] if core else []
    picked, merged = [], []
    for tok, (a, b) in zip(ids, offsets, strict=True):
        # overlaps the template and does not run past its end; zero-width tokens at the start belong to the prefix
        if b > start and a < end and not (a == b == start):
            if a < start:  # the token merged the template's first characters with the context
                if template[: b - start].isspace():
                    continue  # only leading whitespace merged (".\n", "\n\n"): the rest is the template there
                if any(c.isalnum() for c in prefix[a:start]):
                    return []  # glued to a word ("xAnswer"): would only match that word
            if b <= end:
                picked.append(tok)
            elif text[end:b].isspace():  # the last characters merged with whitespace after them (":\n")
                merged = [tok]
    # it must read back as the template: an unknown token (<unk>, or a tokenizer whose vocabulary maps
    # unknown words to some other id) would match any unknown text
    out = []
    for found in (picked + merged, picked) if merged else (picked,):
        decoded = tokenizer.decode(found, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        if found and " ".join(template.split()) in " ".join(decoded.split()):
            out.append(tuple(found))
    return out
