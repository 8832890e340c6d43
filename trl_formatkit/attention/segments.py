"""Where the sequences of a batch lie once its ``batch * length`` tokens are laid end to end.

Two sources, each derived once per forward pass and reused by every layer:

- the collator's metadata (``cu_seq_lens_q/k``, ``max_length_q/k``): nothing is copied to the host. The values are
  checked with one device-side assertion (``torch._assert_async``); on the CPU a failed check is explained by a
  :class:`~trl_formatkit.errors.FormatKitValueError`, on a GPU it stops the program with a device-side assert.
  ``max_length_q/k`` must be Python ints for this (our collator's and trl's are); a tensor or a missing value costs
  one device-to-host copy.
- a 2-D padding mask and/or ``position_ids``: a new sequence starts at each row's first real token and where a
  real token's position follows the previous real token's neither by one nor by their distance in the row. A 0
  inside a row's mask is therefore no boundary: the tokens after it attend to those before it, as in ``eager``.
  This path needs the number of real tokens on the host (one copy per forward pass).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import FormatKitTypeError, FormatKitValueError, preview


@dataclass(frozen=True)
class Segments:
    """Sequence boundaries of a batch laid end to end.

    Attributes:
        cu_q: int32 ``(n + 1,)`` cumulative query lengths.
        cu_k: int32 ``(n + 1,)`` cumulative key/value lengths.
        max_q: The longest query sequence (a bound is enough).
        max_k: The longest key/value sequence.
        index_q: Positions of the real query tokens among ``batch * q_len`` (None: all are real).
        index_k: The same for keys and values.
        holes: Positions among ``batch * q_len`` of masked tokens with real tokens on both sides in their row (a
            0 inside the mask), whose outputs ``eager`` computes from the real tokens before them; None if none.
    """

    cu_q: torch.Tensor
    cu_k: torch.Tensor
    max_q: int
    max_k: int
    index_q: torch.Tensor | None
    index_k: torch.Tensor | None
    holes: torch.Tensor | None = None


# One entry per source: every layer of a forward pass receives the same mask / position_ids / cu_seq_lens
# tensors. Keys hold weak references: a live tensor is the same tensor, and its version counter tells an in-place
# change. Not used while torch.compile traces (the compiled graph derives the boundaries itself).
_CACHE: dict[str, Any] = {}


def _cache_key(*tensors: torch.Tensor | None) -> tuple:
    return tuple((None, None) if t is None else (weakref.ref(t), t._version) for t in tensors)


def _cache_matches(key: tuple, tensors: tuple) -> bool:
    if len(key) != len(tensors):
        return False
    for (ref, version), tensor in zip(key, tensors, strict=True):
        if tensor is None:
            if ref is not None:
                return False
        elif ref is None or ref() is not tensor or tensor._version != version:
            return False
    return True


def _cached(source: str, shape_key: tuple, tensors: tuple) -> Segments | None:
    if torch.compiler.is_compiling():
        return None
    hit = _CACHE.get(source)
    if hit is not None and hit[0] == shape_key and _cache_matches(hit[1], tensors):
        return hit[2]
    return None


def _store(source: str, shape_key: tuple, tensors: tuple, segments: Segments) -> Segments:
    if not torch.compiler.is_compiling():
        _CACHE[source] = (shape_key, _cache_key(*tensors), segments)
    return segments


# ----------------------------------------------------------------------------------------------------------------
# from the collator's metadata
# ----------------------------------------------------------------------------------------------------------------
def _cu_tensor(cu: Any, device: torch.device, what: str) -> torch.Tensor:
    """``cu_seq_lens`` as int32 on ``device``, its layout (not its values) checked: no host round trip."""
    if not isinstance(cu, torch.Tensor):
        cu = torch.as_tensor(cu)
    if cu.ndim != 1 or cu.numel() < 2 or cu.dtype.is_floating_point or cu.dtype == torch.bool:
        raise FormatKitValueError(
            f"{what} must be a 1-D integer tensor [0, len_1, len_1 + len_2, ...] with one more entry than "
            f"sequences, got dtype {cu.dtype} and shape {tuple(cu.shape)}"
        )
    return cu.to(device=device, dtype=torch.int32, non_blocking=True)


def _max_length(value: Any, cu: torch.Tensor, what: str) -> int:
    """``max_length_q/k`` as an int; only a tensor or a missing value is read back from the device."""
    if value is None:
        return int(cu.diff().max())  # one device-to-host copy: the collators pass ints
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise FormatKitValueError(f"{what} must be a single number, got a tensor of shape {tuple(value.shape)}")
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatKitTypeError(f"{what} must be an int, got {type(value).__name__} {preview(value)}")
    return value


_DEVICE_ASSERT = (
    "trl_formatkit: cu_seq_lens_q/k and max_length_q/k do not describe this batch (they must start at 0, never "
    "decrease, end at the number of tokens, and no sequence may be longer than max_length)"
)


def _explain_bad_cu(cu: torch.Tensor, total: int, maxima: tuple[int, int], what: str) -> FormatKitValueError:
    """The error for ``cu_seq_lens`` that failed the check (only built once the check has failed)."""
    values = cu.tolist()
    shown = values if len(values) <= 8 else [*values[:4], "...", *values[-2:]]
    if values[0] != 0 or values[-1] != total or any(b < a for a, b in zip(values, values[1:])):
        return FormatKitValueError(
            f"{what} = {shown} does not describe this batch of {total} tokens: it must start at 0, never "
            f"decrease, and end at the number of tokens (batch x length). Pass the cu_seq_lens_q/k and "
            f"max_length_q/k made by the collator for this very batch, or leave them out to derive them from "
            f"position_ids."
        )
    longest = max(b - a for a, b in zip(values, values[1:]))
    return FormatKitValueError(
        f"max_length_q/k = {maxima[0]}/{maxima[1]} is shorter than the longest sequence in {what} ({longest}); "
        f"pass the values the collator made for this batch, or leave them out"
    )


def _assert_cu(cu: torch.Tensor, total: int, max_len: int, maxima: tuple[int, int], what: str) -> None:
    """Check ``cu`` on its own device: one asynchronous assertion, no copy to the host."""
    diffs = cu.diff()
    ok = (cu[0] == 0) & (cu[-1] == total) & (diffs >= 0).all() & (diffs.max() <= max_len)
    if torch.compiler.is_compiling() or cu.device.type != "cpu":
        torch._assert_async(ok, _DEVICE_ASSERT)
        return
    try:
        torch._assert_async(ok, _DEVICE_ASSERT)
    except RuntimeError as exc:  # raised at once on the CPU: explain it
        raise _explain_bad_cu(cu, total, maxima, what) from exc


def segments_from_cu(
    cu_q: Any, cu_k: Any, max_q: Any, max_k: Any, batch: int, q_len: int, kv_len: int, device: torch.device
) -> Segments:
    """Boundaries from the collator's ``cu_seq_lens_q/k`` and ``max_length_q/k`` (either of a pair may be None).

    Example:
        >>> cu = torch.tensor([0, 3, 5], dtype=torch.int32)
        >>> seg = segments_from_cu(cu, None, 3, None, 1, 5, 5, torch.device("cpu"))
        >>> seg.cu_k.tolist(), seg.max_q, seg.max_k
        ([0, 3, 5], 3, 3)
    """
    same = cu_k is None or cu_k is cu_q or cu_q is None
    cu_q, cu_k = (cu_q, cu_q) if cu_k is None else (cu_k, cu_k) if cu_q is None else (cu_q, cu_k)
    max_q, max_k = (max_q, max_q) if max_k is None else (max_k, max_k) if max_q is None else (max_q, max_k)
    tensors = tuple(t if isinstance(t, torch.Tensor) else None for t in (cu_q, cu_k))
    plain = all(t is not None for t in tensors) and not any(isinstance(m, torch.Tensor) for m in (max_q, max_k))
    shape_key = (batch, q_len, kv_len, device, max_q, max_k)
    if plain and (hit := _cached("cu", shape_key, tensors)) is not None:
        return hit
    cu_q_t = _cu_tensor(cu_q, device, "cu_seq_lens_q")
    cu_k_t = cu_q_t if same else _cu_tensor(cu_k, device, "cu_seq_lens_k")
    if cu_q_t.numel() != cu_k_t.numel():
        raise FormatKitValueError(
            f"cu_seq_lens_q has {cu_q_t.numel() - 1} sequences but cu_seq_lens_k has {cu_k_t.numel() - 1}; "
            f"both must describe the same sequences"
        )
    max_q_i = _max_length(max_q, cu_q_t, "max_length_q")
    max_k_i = max_q_i if same and max_k is max_q else _max_length(max_k, cu_k_t, "max_length_k")
    maxima = (max_q_i, max_k_i)  # formatted only for an error: formatting would fix their values in a compiled graph
    _assert_cu(cu_q_t, batch * q_len, min(max_q_i, max_k_i) if same else max_q_i, maxima, "cu_seq_lens_q")
    if not same:
        _assert_cu(cu_k_t, batch * kv_len, max_k_i, maxima, "cu_seq_lens_k")
    segments = Segments(cu_q_t, cu_k_t, max_q_i, max_k_i, None, None)
    return _store("cu", shape_key, tensors, segments) if plain else segments


# ----------------------------------------------------------------------------------------------------------------
# from the padding mask and position ids
# ----------------------------------------------------------------------------------------------------------------
def _usable_positions(position_ids: Any, batch: int, q_len: int, kv_len: int) -> torch.Tensor | None:
    """``position_ids`` where they can mark boundaries; None for 3-D rotary positions, decoding with a cache, ..."""
    if (
        not isinstance(position_ids, torch.Tensor)
        or position_ids.ndim != 2
        or position_ids.shape[-1] != q_len
        or position_ids.shape[0] not in (1, batch)
        or q_len != kv_len
    ):
        return None
    return position_ids


def _from_starts(starts: torch.Tensor, index: torch.Tensor | None, holes: torch.Tensor | None) -> Segments:
    """Segments from a flag per real token that says where a sequence starts (one device-to-host copy)."""
    device = starts.device
    total = torch.tensor([starts.numel()], dtype=torch.int32, device=device)
    cu = torch.cat([starts.nonzero().squeeze(-1).to(torch.int32), total])
    max_len = int(cu.diff().max()) if cu.numel() > 1 else 0
    return Segments(cu, cu, max_len, max_len, index, index, holes)


def _holes(valid: torch.Tensor) -> torch.Tensor | None:
    """Flat positions of masked tokens that have a real token before and after them in their row."""
    seen = valid.int()
    before = seen.cummax(-1).values.bool()
    after = seen.flip(-1).cummax(-1).values.flip(-1).bool()
    holes = (~valid & before & after).reshape(-1).nonzero().squeeze(-1)
    return holes if holes.numel() else None


def _segments_same_length(
    attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None, batch: int, length: int,
    device: torch.device,
) -> Segments:
    """Training and prefill (queries = keys): boundaries at row starts and position restarts, never at mask holes."""
    if attention_mask is None and position_ids is None:  # rows are whole sequences
        cu = torch.arange(batch + 1, dtype=torch.int32, device=device) * length
        return Segments(cu, cu, length, length, None, None)
    holes = None
    if attention_mask is None:
        tokens, index = torch.arange(batch * length, device=device), None
    else:
        valid = attention_mask.to(device=device, dtype=torch.bool)
        index = tokens = valid.reshape(-1).nonzero().squeeze(-1)
        holes = _holes(valid)
    row, col = tokens // length, tokens % length
    continues = torch.zeros_like(tokens, dtype=torch.bool)
    same_row = row[1:] == row[:-1]
    if position_ids is None:
        continues[1:] = same_row
    else:
        pos = position_ids.to(device).expand(batch, -1).reshape(-1)[tokens]
        step = pos[1:] - pos[:-1]
        continues[1:] = same_row & ((step == 1) | (step == col[1:] - col[:-1]))
    return _from_starts(~continues, index, holes)


def _segments_with_cache(
    attention_mask: torch.Tensor | None, batch: int, q_len: int, kv_len: int, device: torch.device
) -> Segments:
    """Decoding / chunked prefill with a cache: each row is one sequence whose last ``q_len`` tokens are queries."""
    if attention_mask is None:
        cu_q = torch.arange(batch + 1, dtype=torch.int32, device=device) * q_len
        cu_k = torch.arange(batch + 1, dtype=torch.int32, device=device) * kv_len
        return Segments(cu_q, cu_k, q_len, kv_len, None, None)
    valid_k = attention_mask.to(device=device, dtype=torch.bool)
    valid_q = valid_k[:, -q_len:]
    lengths_k = valid_k.sum(-1, dtype=torch.int32)
    lengths_q = valid_q.sum(-1, dtype=torch.int32)
    return Segments(
        torch.nn.functional.pad(lengths_q.cumsum(0, dtype=torch.int32), (1, 0)),
        torch.nn.functional.pad(lengths_k.cumsum(0, dtype=torch.int32), (1, 0)),
        int(lengths_q.max()),
        int(lengths_k.max()),
        valid_q.reshape(-1).nonzero().squeeze(-1),
        valid_k.reshape(-1).nonzero().squeeze(-1),
    )


def segments_from_tokens(
    attention_mask: torch.Tensor | None,
    position_ids: Any,
    batch: int,
    q_len: int,
    kv_len: int,
    device: torch.device,
) -> Segments:
    """Sequence boundaries from a 2-D padding mask and/or position ids (either may be None).

    Example:
        >>> mask = torch.tensor([[1, 1, 0, 1, 0]])            # a hole at 2, right padding at 4
        >>> seg = segments_from_tokens(mask, None, 1, 5, 5, torch.device("cpu"))
        >>> seg.cu_q.tolist(), seg.index_q.tolist()           # one sequence of the 3 real tokens
        ([0, 3], [0, 1, 3])
    """
    position_ids = _usable_positions(position_ids, batch, q_len, kv_len)
    shape_key = (batch, q_len, kv_len, device)
    tensors = (attention_mask, position_ids)
    if (hit := _cached("tokens", shape_key, tensors)) is not None:
        return hit
    if q_len == kv_len:
        segments = _segments_same_length(attention_mask, position_ids, batch, q_len, device)
    else:
        segments = _segments_with_cache(attention_mask, batch, q_len, kv_len, device)
    return _store("tokens", shape_key, tensors, segments)
