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
from typing import NamedTuple

import numpy as np

from .errors import FormatKitValueError
from .templates import TemplateSpec, as_template_list, template_variants  # re-exported: masking.X as before

__all__ = [
    "IGNORE_INDEX",
    "TemplateSpec",
    "as_template_list",
    "template_variants",
    "find_template",
    "find_templates",
    "TemplateSpans",
    "find_template_spans",
    "completion_mask_from_spans",
    "completion_mask_from_templates",
    "suspicious_responses",
    "check_template_roles",
    "labels_from_mask",
    "position_ids_from_lengths",
    "cu_seq_lens_from_lengths",
    "seq_idx_from_lengths",
    "pad_flat",
    "real_token_mask",
]

IGNORE_INDEX = -100
"""Label of a token the loss ignores (PyTorch's ``CrossEntropyLoss(ignore_index=-100)``)."""

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

    The rule is a plain left-to-right scan, as ``str.find`` or ``re.finditer`` would do it: at each position the
    *longest* variant that starts there is taken, and the scan goes on after its end (leftmost-longest,
    non-overlapping). So a template overlapping itself (an end template ``(7, 7)`` in ``7 7 7``) is found once,
    at the first position, and a variant nested inside a longer one at the same place is not found again. The
    scan restarts in every sequence (``lengths``): an occurrence never crosses sequences.

    Example:
        >>> ids = np.array([7, 13, 20, 21, 5, 20, 21, 6])
        >>> starts, ends = find_templates(ids, [(20, 21), (13, 20, 21)])
        >>> starts.tolist(), ends.tolist()
        ([1, 5], [4, 7])
        >>> starts, ends = find_templates(np.array([7, 7, 7, 1]), [(7, 7)])
        >>> starts.tolist(), ends.tolist()
        ([0], [2])
    """
    starts_l, ends_l = [], []
    for variant in variants:
        s = find_template(ids, variant, lengths)
        starts_l.append(s)
        ends_l.append(s + len(variant))
    if not starts_l:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if len(starts_l) == 1:  # one variant: already sorted, one length
        starts, ends = starts_l[0], ends_l[0]
    else:
        starts, ends = np.concatenate(starts_l), np.concatenate(ends_l)
        order = np.lexsort((-ends, starts))
        starts, ends = starts[order], ends[order]
        longest = np.ones(starts.size, dtype=bool)  # the longest variant at each start
        longest[1:] = starts[1:] != starts[:-1]
        starts, ends = starts[longest], ends[longest]
    if starts.size > 1 and bool((starts[1:] < ends[:-1]).any()):
        keep = _scan_path(starts, ends)
        starts, ends = starts[keep], ends[keep]
    return starts, ends


def _scan_path(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Which candidate spans a left-to-right scan takes (starts sorted and distinct), in O(k log k) numpy.

    The scan takes the first span, then the first one starting at or after its end, and so on: a path through
    ``nxt`` from span 0. Pointer doubling marks the path's first 2, 4, 8, ... spans, with no loop over spans.
    """
    k = starts.shape[0]
    jump = np.append(np.searchsorted(starts, ends, side="left"), k)  # span -> next span taken; k = none
    on = np.zeros(k + 1, dtype=bool)
    on[0] = True
    while True:
        on[jump[on]] = True
        if jump[0] == k:  # the path is shorter than the current jump: all of it is marked
            return on[:k]
        jump = jump[jump]


class TemplateSpans(NamedTuple):
    """Where the templates are in a flat batch: ``(starts, ends)`` per role, and the sequences' offsets / lengths."""

    offsets: np.ndarray
    lengths: np.ndarray
    response: tuple[np.ndarray, np.ndarray]
    instruction: tuple[np.ndarray, np.ndarray] | None
    end: tuple[np.ndarray, np.ndarray] | None


def find_template_spans(
    ids: np.ndarray,
    lengths: np.ndarray,
    response: Sequence[Sequence[int]],
    instruction: Sequence[Sequence[int]] = (),
    end: Sequence[Sequence[int]] = (),
) -> TemplateSpans:
    """Find the response / instruction / end templates once (:func:`find_templates` for each role).

    The result feeds :func:`completion_mask_from_spans` and :func:`suspicious_responses`. ``instruction`` /
    ``end`` are None when no such template is given.

    Example:
        >>> spans = find_template_spans(np.array([1, 50, 2, 60, 8]), np.array([5]), [(2,)], end=[(8,)])
        >>> spans.response[0].tolist(), spans.end[1].tolist(), spans.instruction
        ([2], [5], None)
    """
    offsets = np.zeros(int(lengths.shape[0]) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return TemplateSpans(
        offsets,
        lengths,
        find_templates(ids, response, lengths),
        find_templates(ids, instruction, lengths) if instruction else None,
        find_templates(ids, end, lengths) if end else None,
    )


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
    runs = np.empty_like(positions)
    runs[:-1] = positions[1:] - positions[:-1]
    runs[-1] = n - positions[-1]
    return np.repeat(values, runs)


def completion_mask_from_templates(
    ids: np.ndarray,
    lengths: np.ndarray,
    response: Sequence[Sequence[int]],
    instruction: Sequence[Sequence[int]] = (),
    end: Sequence[Sequence[int]] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Which tokens to train, from response / instruction / end templates.

    Rules, per sequence (templates are found by :func:`find_templates`: a left-to-right scan, leftmost-longest,
    non-overlapping, per role):

    - response only (single turn, trl's rule): everything up to and including the *last* response template is
      masked, everything after it is trained.
    - with instruction templates (multi-turn): a token is trained when the closest template before it is a
      response template (and the token lies after that template's last token); instruction templates and
      what follows them are masked.
    - with end templates: train from each response template up to and including the next end template; also
      stop at an instruction template when both are given.

    Templates are found in the token ids, blind to the conversation's structure: a response template typed inside
    a user message opens an answer there. :func:`suspicious_responses` counts such layouts.

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
    spans = find_template_spans(ids, lengths, response, instruction, end)
    return completion_mask_from_spans(spans, int(ids.shape[0]))


def completion_mask_from_spans(spans: TemplateSpans, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`completion_mask_from_templates` from templates already found (:func:`find_template_spans`).

    Example:
        >>> ids = np.array([1, 50, 2, 60, 8, 70])  # 1 = user, 2 = assistant, 8 = end
        >>> mask, *_ = completion_mask_from_spans(find_template_spans(ids, np.array([6]), [(2,)], end=[(8,)]), 6)
        >>> mask.astype(int).tolist()
        [0, 0, 0, 1, 1, 0]
    """
    offsets, lengths = spans.offsets, spans.lengths
    n_seq = int(lengths.shape[0])
    r_starts, r_ends = spans.response
    has_response = np.zeros(n_seq, dtype=bool)
    r_seq = np.searchsorted(offsets, r_starts, side="right") - 1
    has_response[r_seq] = True
    has_instruction = np.ones(n_seq, dtype=bool)

    if spans.instruction is None and spans.end is None:
        # single turn: train what follows the last response template of each sequence
        last_end = np.full(n_seq, -1, dtype=np.int64)
        np.maximum.at(last_end, r_seq, r_ends)
        last_end = np.where(last_end < 0, offsets[1:], last_end)  # no template: nothing trained
        return np.arange(n) >= np.repeat(last_end, lengths), has_response, has_instruction

    # multi-turn: a state machine over template events. At one position the event listed last wins: masking
    # events come after "train", so an empty answer (an instruction template right after a response template)
    # or a template at a sequence start stays masked.
    events = [(r_ends, True)]  # training starts after a response template ...
    if spans.end is not None:
        events.append((spans.end[1], False))  # ... and stops after an end template (whose tokens are trained)
    if spans.instruction is not None:
        i_starts = spans.instruction[0]
        has_instruction = np.zeros(n_seq, dtype=bool)
        has_instruction[np.searchsorted(offsets, i_starts, side="right") - 1] = True
        events.append((i_starts, False))  # an instruction template masks from its first token
    events.append((r_starts, False))  # the response template's own tokens are masked
    events.append((offsets[:-1], False))  # every sequence starts masked
    return _states_from_events(n, events), has_response, has_instruction


def suspicious_responses(spans: TemplateSpans) -> np.ndarray:
    """Per sequence, how many response templates sit where a turn cannot start: a sign of marker text in a message.

    A response template is suspicious when the template before it in its sequence is another response template
    (a second answer opened before the first was closed by an end or instruction template), or, when end
    templates are given, an instruction template (a response inside a turn that an instruction opened and no end
    template closed: ``"<|user|>Summarise: <|assistant|> ..."``). An instruction or end template that starts
    where a response template starts (qwen2's ``<|im_start|>`` in ``<|im_start|>assistant``) does not count. With a response template only
    (the single-turn rule), several responses are trl's multi-turn case and nothing is suspicious.

    Example:
        >>> ids = np.array([1, 50, 2, 51, 8, 2, 60, 8])  # 1 = user, 2 = assistant, 8 = end; '2' typed at 2
        >>> spans = find_template_spans(ids, np.array([8]), [(2,)], instruction=[(1,)], end=[(8,)])
        >>> suspicious_responses(spans).tolist()
        [1]
    """
    n_seq = int(spans.offsets.shape[0]) - 1
    if spans.instruction is None and spans.end is None:
        return np.zeros(n_seq, dtype=np.int64)
    # events in order: 0 sequence start, 1 response, 2 instruction, 3 end. At one position that is also their
    # order, so an instruction or end template that starts the response template never precedes it.
    found = [spans.offsets[:-1], spans.response[0]]
    kinds = [0, 1]
    for kind, spans_of_role in ((2, spans.instruction), (3, spans.end)):
        if spans_of_role is not None:
            found.append(spans_of_role[0])
            kinds.append(kind)
    pos = np.concatenate(found)
    kind = np.repeat(np.array(kinds, dtype=np.int8), [f.shape[0] for f in found])
    order = np.lexsort((kind, pos))
    kind = kind[order]
    bad = np.zeros(kind.shape[0], dtype=bool)
    bad[1:] = (kind[1:] == 1) & ((kind[:-1] == 1) | ((kind[:-1] == 2) & (spans.end is not None)))
    if not bad.any():
        return np.zeros(n_seq, dtype=np.int64)
    seq = np.searchsorted(spans.offsets, pos[order][bad], side="right") - 1
    return np.bincount(seq, minlength=n_seq).astype(np.int64)


def _contains(outer: Sequence[int], inner: Sequence[int]) -> int | None:
    """Where ``inner`` first occurs in ``outer``, or None."""
    m = len(inner)
    return next((i for i in range(len(outer) - m + 1) if tuple(outer[i : i + m]) == tuple(inner)), None)


def check_template_roles(
    response: Sequence[Sequence[int]],
    instruction: Sequence[Sequence[int]] = (),
    end: Sequence[Sequence[int]] = (),
) -> None:
    """Refuse template variants whose roles collide, so that no row is trained wrongly in silence.

    - a response variant equal to an instruction variant, or found inside one (qwen2: ``<|im_start|>`` as the
      response template and ``<|im_start|>user\\n`` as the instruction template): every user turn would open an
      answer, and system and user text would be trained;
    - an end variant that is the end of a response variant (an end template ``"\\n"`` after
      ``"### Response:\\n"``): every answer would be closed by its own template, and nothing trained.

    An instruction template that is the start of the response template is fine: the response is masked from its
    first token either way.

    Raises:
        FormatKitValueError: naming the two templates (as token ids) and the fix.

    Example:
        >>> check_template_roles([(32001,)], instruction=[(32010,)], end=[(32007,)])
        >>> check_template_roles([(5,)], instruction=[(5, 6)])
        Traceback (most recent call last):
        ...
        trl_formatkit.errors.FormatKitValueError: the response template [5] is inside the instruction template [5, 6]: every instruction turn would also open an answer, and its text would be trained. Give the whole response template (for example '<|im_start|>assistant\\n', not '<|im_start|>')
    """
    for r in response:
        for i in instruction:
            if tuple(r) == tuple(i):
                raise FormatKitValueError(
                    f"the response and instruction templates share the token ids {list(r)}: the collator could not "
                    "tell a user turn from an assistant turn; use distinct templates"
                )
            if _contains(i, r) is not None:
                raise FormatKitValueError(
                    f"the response template {list(r)} is inside the instruction template {list(i)}: every "
                    "instruction turn would also open an answer, and its text would be trained. Give the whole "
                    "response template (for example '<|im_start|>assistant\\n', not '<|im_start|>')"
                )
        for e in end:
            if len(e) <= len(r) and tuple(r[len(r) - len(e) :]) == tuple(e):
                raise FormatKitValueError(
                    f"the end_template {list(e)} is the response template's last token(s) {list(r)}: every answer "
                    "would be closed by its own template and nothing trained. Use the text that ends an answer "
                    "(for example '<|end|>' or the EOS token), not the response template's trailing newline"
                )


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
    flat: np.ndarray | Sequence[np.ndarray],
    lengths: np.ndarray,
    pad_value: int | Sequence[int],
    *,
    padding_side: str = "right",
    pad_to_multiple_of: int | None = None,
) -> np.ndarray:
    """Cut a flat array into rows of a 2-D array, padded with ``pad_value``.

    ``flat`` may also be a list of flat arrays of one dtype with one pad value each: they are laid out in one
    pass, as one array of shape ``(k, rows, width)`` (a collator pads ids, labels and the mask together).

    Example:
        >>> pad_flat(np.array([1, 2, 3, 4, 5]), np.array([3, 2]), 0).tolist()
        [[1, 2, 3], [4, 5, 0]]
        >>> pad_flat(np.array([1, 2, 3, 4, 5]), np.array([3, 2]), 0, padding_side="left").tolist()
        [[1, 2, 3], [0, 4, 5]]
        >>> pad_flat(np.array([1, 2, 3]), np.array([3]), -1, pad_to_multiple_of=4).tolist()
        [[1, 2, 3, -1]]
        >>> pad_flat([np.array([1, 2, 3]), np.array([-5, 2, 3])], np.array([1, 2]), [0, -100]).tolist()
        [[[1, 0], [2, 3]], [[-5, -100], [2, 3]]]
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    width = int(lengths.max()) if lengths.size else 0
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    real = real_token_mask(lengths, width, padding_side)
    if isinstance(flat, np.ndarray):
        out = np.full(real.shape, pad_value, dtype=flat.dtype)
        out[real] = flat
        return out
    pads = list(pad_value) if isinstance(pad_value, Sequence) else [pad_value] * len(flat)
    out = np.empty((len(flat), *real.shape), dtype=flat[0].dtype)
    for layer, values, pad in zip(out, flat, pads, strict=True):
        layer.fill(pad)
        layer[real] = values
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
