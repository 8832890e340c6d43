"""Masking engine: find templates in token ids and turn them into labels.

Pure functions on numpy int arrays. A batch travels as one *flat* array of token ids (every sequence one after
the other, no padding) plus the sequences' ``lengths``; padded and padding-free batches are both cut from the
same flat labels, so they cannot disagree. Nothing here loops over tokens in Python: the cost is a handful of
vectorised passes over the flat array, whatever the number of templates or turns.

Labels follow the Hugging Face convention: the input id where the token is trained, ``IGNORE_INDEX`` (-100)
elsewhere. Labels are *not* shifted (the model shifts them).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .errors import FormatKitTypeError, FormatKitValueError

__all__ = [
    "IGNORE_INDEX",
    "TemplateSpec",
    "as_template_list",
    "template_variants",
    "find_template",
    "find_templates",
    "completion_mask_from_templates",
    "labels_from_mask",
    "position_ids_from_lengths",
    "cu_seq_lens_from_lengths",
    "seq_idx_from_lengths",
    "pad_flat",
    "real_token_mask",
]

IGNORE_INDEX = -100
"""Label of a token the loss ignores (PyTorch's ``CrossEntropyLoss(ignore_index=-100)``)."""

# A template as the user gives it: a string, a list of token ids, or several of either.
TemplateSpec = str | Sequence[int] | Sequence[str | Sequence[int]]

# Text placed before and after a template to see how it tokenizes in context. Before: start of text, after a
# newline, a blank line, a space, a word, punctuation (and the tokenizer's own special tokens, added at run time).
_PREFIX_CONTEXTS = (
    "", "\n", "\n\n", " ", ".", ":", "x", "x\n", "x\n\n", "x ", "x.", "x.\n", "x:", "x: ", "x!", "x?", "x,", "x)",
)  # fmt: skip
# After: end of text, a space and a word, a newline; a word right after only where the template ends in
# whitespace (elsewhere it would glue the template's last characters to a word no real text has).
_SUFFIX_CONTEXTS = ("", " x", "\n", "\nx", " ")


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
    a token where the template's leading whitespace merged with the text before it (Qwen2's ``".\\n"``).

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
            ids = _ids_covering(tokenizer, prefix, template, suffix)
            if ids and ids not in variants:
                variants.append(ids)
    return variants


def _ids_covering(tokenizer: Any, prefix: str, template: str, suffix: str) -> tuple[int, ...] | None:
    """Ids of the tokens that cover ``template`` inside ``prefix + template + suffix``."""
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
            return None
        core = full[len(head) : len(full) - len(tail)]
        return tuple(core) or None
    picked = []
    for tok, (a, b) in zip(ids, offsets, strict=True):
        # overlaps the template and does not run past its end; zero-width tokens at the start belong to the prefix
        if b > start and a < end and b <= end and not (a == b == start):
            if a < start:  # the token merged the template's first characters with the context
                if template[: b - start].isspace():
                    continue  # only leading whitespace merged (".\n", "\n\n"): the rest is the template there
                if any(c.isalnum() for c in prefix[a:start]):
                    return None  # glued to a word ("xAnswer"): would only match that word
            picked.append(tok)
    if not picked:
        return None
    # it must read back as the template: an unknown token (<unk>, or a tokenizer whose vocabulary maps
    # unknown words to some other id) would match any unknown text
    decoded = tokenizer.decode(picked, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if " ".join(template.split()) not in " ".join(decoded.split()):
        return None
    return tuple(picked)


def find_template(ids: np.ndarray, template: Sequence[int], lengths: np.ndarray | None = None) -> np.ndarray:
    """Start positions of every occurrence of ``template`` in a flat id array.

    With ``lengths`` (the sequences laid end to end in ``ids``), an occurrence may not cross from one sequence
    into the next.

    Example:
        >>> ids = np.array([5, 1, 2, 9, 1, 2, 1, 2])
        >>> find_template(ids, [1, 2]).tolist()
        [1, 4, 6]
        >>> find_template(ids, [1, 2], lengths=np.array([5, 3])).tolist()  # the 1, 2 at 4-5 crosses sequences
        [1, 6]
    """
    template = np.asarray(template, dtype=ids.dtype)
    m = int(template.shape[0])
    n = int(ids.shape[0])
    if m == 0 or m > n:
        return np.empty(0, dtype=np.int64)
    cand = np.flatnonzero(ids[: n - m + 1] == template[0])
    for j in range(1, m):  # loop over template tokens (a handful), each a vectorised check of the candidates
        if cand.size == 0:
            break
        cand = cand[ids[cand + j] == template[j]]
    if lengths is not None and m > 1 and cand.size:
        ends = np.cumsum(lengths)
        seq = np.searchsorted(ends, cand, side="right")
        cand = cand[cand + m <= ends[seq]]
    return cand.astype(np.int64, copy=False)


def find_templates(
    ids: np.ndarray, variants: Iterable[Sequence[int]], lengths: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(starts, ends)`` of the occurrences of any of ``variants``, sorted by start (end exclusive).

    Overlapping occurrences (one variant inside another, a template overlapping itself) merge into one span.

    Example:
        >>> ids = np.array([7, 13, 20, 21, 5, 20, 21, 6])
        >>> starts, ends = find_templates(ids, [(20, 21), (13, 20, 21)])
        >>> starts.tolist(), ends.tolist()
        ([1, 5], [4, 7])
    """
    starts_l, ends_l = [], []
    for variant in variants:
        s = find_template(ids, variant, lengths)
        starts_l.append(s)
        ends_l.append(s + len(variant))
    if not starts_l:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if len(starts_l) == 1:  # one variant: already sorted
        starts, ends = starts_l[0], ends_l[0]
    else:
        starts, ends = np.concatenate(starts_l), np.concatenate(ends_l)
        order = np.lexsort((-ends, starts))
        starts, ends = starts[order], ends[order]
    if starts.size > 1 and bool((starts[1:] < ends[:-1]).any()):
        # merge occurrences that overlap (variants nested in each other, a template overlapping itself)
        reach = np.maximum.accumulate(ends)
        first = np.ones(starts.size, dtype=bool)
        first[1:] = starts[1:] >= reach[:-1]
        heads = np.flatnonzero(first)
        starts, ends = starts[heads], np.maximum.reduceat(ends, heads)
    return starts, ends


def _states_from_events(n: int, events: list[tuple[np.ndarray, int]]) -> np.ndarray:
    """Per-token state from sparse events, in O(events log events + n).

    ``events`` are ``(positions, value)`` pairs; at one position, the pair listed last wins. The state holds from
    an event's position up to the next event. Position 0 must carry an event; positions >= n are dropped.
    """
    positions = np.concatenate([p for p, _ in events])
    values = np.concatenate([np.full(p.shape[0], v, dtype=bool) for p, v in events])
    priority = np.concatenate([np.full(p.shape[0], k, dtype=np.int64) for k, (p, _) in enumerate(events)])
    order = np.lexsort((priority, positions))
    positions, values = positions[order], values[order]
    last = np.ones(positions.shape[0], dtype=bool)
    last[:-1] = positions[1:] != positions[:-1]
    keep = last & (positions < n)
    positions, values = positions[keep], values[keep]
    return np.repeat(values, np.diff(positions, append=n))


def completion_mask_from_templates(
    ids: np.ndarray,
    lengths: np.ndarray,
    response: Sequence[Sequence[int]],
    instruction: Sequence[Sequence[int]] = (),
    end: Sequence[Sequence[int]] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which tokens to train, from response / instruction / end templates.

    Rules, per sequence:

    - response only (single turn, trl's rule): everything up to and including the *last* response template is
      masked, everything after it is trained.
    - with instruction templates (multi-turn): a token is trained when the closest template before it is a
      response template (and the token lies after that template's last token); instruction templates and
      what follows them are masked.
    - with end templates: train from each response template up to and including the next end template; also
      stop at an instruction template when both are given.

    Args:
        ids: flat token ids, every sequence after the other.
        lengths: length of each sequence (sum == ``len(ids)``).
        response: token-id variants of the response template (any variant counts).
        instruction: token-id variants of the instruction template(s).
        end: token-id variants of the end-of-turn template(s).

    Returns:
        ``(mask, has_response, has_instruction)``: ``mask`` is a bool array like ``ids`` (True = trained);
        ``has_response`` / ``has_instruction`` say per sequence whether the template was found (all True for
        instruction when no instruction template is given).

    Example:
        >>> ids = np.array([1, 50, 2, 60, 61, 1, 51, 2, 62, 0])  # 1 = user, 2 = assistant, 0 = eos
        >>> mask, found, _ = completion_mask_from_templates(ids, np.array([10]), response=[(2,)])
        >>> mask.astype(int).tolist()
        [0, 0, 0, 0, 0, 0, 0, 0, 1, 1]
        >>> mask, *_ = completion_mask_from_templates(ids, np.array([10]), [(2,)], instruction=[(1,)])
        >>> mask.astype(int).tolist()
        [0, 0, 0, 1, 1, 0, 0, 0, 1, 1]
    """
    n = int(ids.shape[0])
    n_seq = int(lengths.shape[0])
    offsets = np.zeros(n_seq + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    r_starts, r_ends = find_templates(ids, response, lengths)
    r_seq = np.searchsorted(offsets, r_starts, side="right") - 1
    has_response = np.zeros(n_seq, dtype=bool)
    has_response[r_seq] = True
    has_instruction = np.ones(n_seq, dtype=bool)

    if not instruction and not end:
        # single turn: train what follows the last response template of each sequence
        last_end = np.full(n_seq, -1, dtype=np.int64)
        np.maximum.at(last_end, r_seq, r_ends)
        last_end = np.where(last_end < 0, offsets[1:], last_end)  # no template: nothing trained
        return np.arange(n) >= np.repeat(last_end, lengths), has_response, has_instruction

    # multi-turn: a state machine over template events. At one position the event listed last wins: masking
    # events come after "train", so an empty answer (an instruction template right after a response template)
    # or a template at a sequence start stays masked.
    events = [(r_ends, True)]  # training starts after a response template ...
    if end:
        _, e_ends = find_templates(ids, end, lengths)
        events.append((e_ends, False))  # ... and stops after an end template (whose tokens are trained)
    if instruction:
        i_starts, _ = find_templates(ids, instruction, lengths)
        has_instruction = np.zeros(n_seq, dtype=bool)
        has_instruction[np.searchsorted(offsets, i_starts, side="right") - 1] = True
        events.append((i_starts, False))  # an instruction template masks from its first token
    events.append((r_starts, False))  # the response template's own tokens are masked
    events.append((offsets[:-1], False))  # every sequence starts masked
    return _states_from_events(n, events), has_response, has_instruction


def labels_from_mask(ids: np.ndarray, mask: np.ndarray, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Labels: the id where ``mask`` is True, ``ignore_index`` elsewhere (a new array).

    Example:
        >>> labels_from_mask(np.array([5, 6, 7]), np.array([False, True, True])).tolist()
        [-100, 6, 7]
    """
    return np.where(mask, ids, np.asarray(ignore_index, dtype=ids.dtype))


def position_ids_from_lengths(lengths: np.ndarray) -> np.ndarray:
    """Positions restarting at 0 for every sequence.

    Example:
        >>> position_ids_from_lengths(np.array([3, 2])).tolist()
        [0, 1, 2, 0, 1]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    n = int(lengths.sum())
    starts = np.zeros(lengths.shape[0], dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    return np.arange(n, dtype=np.int64) - np.repeat(starts, lengths)


def cu_seq_lens_from_lengths(lengths: np.ndarray) -> np.ndarray:
    """Cumulative sequence lengths (int32, starting at 0), as flash/varlen attention wants them.

    Example:
        >>> cu_seq_lens_from_lengths(np.array([3, 2])).tolist()
        [0, 3, 5]
    """
    out = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=out[1:])
    return out


def seq_idx_from_lengths(lengths: np.ndarray) -> np.ndarray:
    """Index of the sequence each token belongs to (int32).

    Example:
        >>> seq_idx_from_lengths(np.array([3, 2])).tolist()
        [0, 0, 0, 1, 1]
    """
    return np.repeat(np.arange(len(lengths), dtype=np.int32), lengths)


def pad_flat(
    flat: np.ndarray,
    lengths: np.ndarray,
    pad_value: int,
    *,
    padding_side: str = "right",
    pad_to_multiple_of: int | None = None,
) -> np.ndarray:
    """Cut a flat array into rows of a 2-D array, padded with ``pad_value``.

    Example:
        >>> pad_flat(np.array([1, 2, 3, 4, 5]), np.array([3, 2]), 0).tolist()
        [[1, 2, 3], [4, 5, 0]]
        >>> pad_flat(np.array([1, 2, 3, 4, 5]), np.array([3, 2]), 0, padding_side="left").tolist()
        [[1, 2, 3], [0, 4, 5]]
        >>> pad_flat(np.array([1, 2, 3]), np.array([3]), -1, pad_to_multiple_of=4).tolist()
        [[1, 2, 3, -1]]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    width = int(lengths.max()) if lengths.size else 0
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    real = real_token_mask(lengths, width, padding_side)
    out = np.full(real.shape, pad_value, dtype=flat.dtype)
    out[real] = flat
    return out


def real_token_mask(lengths: np.ndarray, width: int, padding_side: str = "right") -> np.ndarray:
    """Where the real tokens of each row go in a padded ``(rows, width)`` layout (True = real token).

    In row-major order the True cells follow the flat order of the tokens, whichever the padding side, so
    ``padded[mask] = flat`` lays a flat array out.

    Example:
        >>> real_token_mask(np.array([1, 3]), 3, "left").astype(int).tolist()
        [[0, 0, 1], [1, 1, 1]]
    """
    if padding_side not in ("right", "left"):
        raise FormatKitValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
    cols = np.arange(width)
    lengths = np.asarray(lengths, dtype=np.int64)
    if padding_side == "left":
        return cols[None, :] >= (width - lengths)[:, None]
    return cols[None, :] < lengths[:, None]
