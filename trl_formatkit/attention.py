"""Padding-free attention for transformers, built on PyTorch's own variable-length flash attention.

Padding-free batches (``DataCollatorForCompletionOnlyLM(..., padding_free=True)``, trl's
``DataCollatorForLanguageModeling(padding_free=True)``, transformers' ``DataCollatorWithFlattening``) put every
sequence of a batch one after the other in a single row, ``input_ids`` of shape ``(1, N)``, with
``position_ids`` restarting at 0 for each sequence and, from our collator and trl's, ``cu_seq_lens_q/k`` and
``max_length_q/k``. Attention must then stay inside each sequence. transformers does that with the
``flash_attention_2`` kernels of the ``flash-attn`` package (a long compile, a CUDA-version match); its
``sdpa`` builds a dense ``N x N`` block-diagonal mask, which leaves PyTorch's fast kernels unusable.

:func:`register` adds an attention function to transformers' ``AttentionInterface`` that runs PyTorch's own
variable-length flash attention (``torch.nn.attention.varlen.varlen_attn``, torch >= 2.10 on CUDA): nothing to
install beyond torch and transformers::

    from trl_formatkit.attention import register

    name = register()                                   # "formatkit_varlen"
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=name, dtype=torch.bfloat16)
    # or, on a model already loaded:
    model.set_attn_implementation(name)

What it does with a batch:

- **Flattened batches** (no ``attention_mask``): sequence boundaries come from ``cu_seq_lens_q/k`` and
  ``max_length_q/k`` where the collator gives them, else from ``position_ids`` (a new sequence starts wherever a
  position does not follow the previous one by exactly one, and at every row start, so several packed rows in one
  batch work too). The boundaries are derived once per forward pass and reused by every layer.
- **Padded batches** (a 2-D ``attention_mask``, left or right padding): the padding is dropped before the
  kernel and restored after it, as transformers' flash-attention path does; generation with a KV cache works.
- Grouped-query attention (fewer key/value heads than query heads), the model's ``scaling``, causal and
  bidirectional modules, and sliding windows (Mistral, Qwen2, Phi-3) are handled.
- What the kernel cannot do raises :class:`~trl_formatkit.errors.FormatKitValueError` naming the fix:
  attention-logit soft-capping (Gemma 2), attention sinks (``s_aux``), a sliding window on a torch whose
  ``varlen_attn`` has no ``window_size``. A 4-D mask made by the caller is passed on to transformers' ``sdpa``.

Where the kernel cannot run (a CPU tensor, float32 without autocast, torch < 2.10, a GPU older than Ampere,
attention dropout in training), a per-sequence fallback computes the same function exactly with
``scaled_dot_product_attention`` on each sequence; that is what runs in the CPU tests. On CUDA the fallback is
announced once with a :class:`~trl_formatkit.errors.FormatKitWarning`, since it is slower.

Accuracy, measured. In float32 (CPU, or CUDA through the fallback) the logits and gradients of a flattened
batch with this attention equal those of ``sdpa`` on the padded batch to 1e-4 (``tests/test_attention.py``; on
the H100 the largest logit difference was 1.5e-6). In bfloat16 on the GPU the two paths round differently. On
tiny random Llama, Qwen2, Mistral (also with a 64-token sliding window) and Phi-3 models, H100, torch 2.11,
transformers 5.17 (``benchmarks/padded_vs_flat.py``), the relative error ``||flat - padded|| / ||padded||``
was at most 3.8e-3 for the logits and 5.5e-3 for all parameter gradients, smaller than the error of bfloat16
itself: padded ``sdpa`` in bfloat16 against float32 is 8.6e-3 (logits) and 9.6e-3 (gradients), and this
attention in bfloat16 against float32 is the same. The documented bf16 tolerance is therefore a relative error
of 1e-2 for logits and gradients; the kernel alone against a float64 reference stays under 3.1e-3 (outputs and
the gradients of q, k, v, with grouped-query attention, a custom scale and a sliding window). The loss of a
0.48B model at initialisation agrees with padded ``sdpa`` to 2e-5 (``benchmarks/RESULTS.md``).

Example:
    >>> import torch
    >>> from trl_formatkit.attention import register, varlen_attention_forward
    >>> register()
    'formatkit_varlen'
    >>> q = torch.randn(1, 4, 5, 8)                      # (batch, heads, tokens, head_dim): 2 sequences, 3 + 2
    >>> k = v = torch.randn(1, 2, 5, 8)                  # 2 key/value heads (grouped-query attention)
    >>> module = torch.nn.Module()
    >>> out, weights = varlen_attention_forward(
    ...     module, q, k, v, None, cu_seq_lens_q=torch.tensor([0, 3, 5], dtype=torch.int32),
    ...     cu_seq_lens_k=torch.tensor([0, 3, 5], dtype=torch.int32), max_length_q=3, max_length_k=3)
    >>> out.shape, weights                               # (batch, tokens, heads, head_dim)
    (torch.Size([1, 5, 4, 8]), None)
    >>> second = torch.nn.functional.scaled_dot_product_attention(   # the second sequence on its own
    ...     q[:, :, 3:], k[:, :, 3:].repeat_interleave(2, 1), v[:, :, 3:].repeat_interleave(2, 1), is_causal=True)
    >>> torch.allclose(out[:, 3:], second.transpose(1, 2), atol=1e-6)
    True
"""

from __future__ import annotations

import functools
import inspect
import math
import warnings
import weakref
from dataclasses import dataclass
from typing import Any, Callable

import torch

from .errors import FormatKitTypeError, FormatKitValueError, FormatKitWarning

__all__ = [
    "DEFAULT_NAME",
    "register",
    "varlen_attention_forward",
    "varlen_attention_mask",
    "varlen_kernel_available",
]

DEFAULT_NAME = "formatkit_varlen"

# Names transformers ships: registering ours under one of them would replace a built-in implementation.
_BUILTIN_NAMES = frozenset(
    {
        "eager",
        "sdpa",
        "flex_attention",
        "flash_attention_2",
        "flash_attention_3",
        "flash_attention_4",
        "paged|eager",
        "paged|sdpa",
        "paged|flash_attention_2",
        "paged|flash_attention_3",
    }
)


# ----------------------------------------------------------------------------------------------------------------
# registration
# ----------------------------------------------------------------------------------------------------------------
def register(name: str = DEFAULT_NAME, *, replace: bool = False) -> str:
    """Register the padding-free attention in transformers under ``name`` and return ``name``.

    Adds :func:`varlen_attention_forward` to ``transformers.AttentionInterface`` and :func:`varlen_attention_mask`
    to ``transformers.masking_utils.AttentionMaskInterface`` (so that no dense 4-D mask is built for flattened
    batches, as with ``flash_attention_2``). Calling it again with the same name does nothing more.

    Args:
        name: The attention implementation name to use with ``attn_implementation=name``.
        replace: Take over ``name`` even where another attention function is registered under it.

    Returns:
        ``name``, to pass to ``from_pretrained(..., attn_implementation=name)`` or
        ``model.set_attn_implementation(name)``.

    Raises:
        FormatKitTypeError: ``name`` is not a string.
        FormatKitValueError: ``name`` is empty, is one of transformers' own implementations (``"sdpa"``, ...),
            or already names another attention function and ``replace`` is False.

    Example:
        >>> from transformers import AttentionInterface
        >>> from trl_formatkit.attention import register, varlen_attention_forward
        >>> register("formatkit_varlen")
        'formatkit_varlen'
        >>> register("formatkit_varlen")                   # idempotent
        'formatkit_varlen'
        >>> AttentionInterface()["formatkit_varlen"] is varlen_attention_forward
        True
        >>> register("sdpa")
        Traceback (most recent call last):
        ...
        trl_formatkit.errors.FormatKitValueError: 'sdpa' is one of transformers' own attention implementations; ...
    """
    if not isinstance(name, str):
        raise FormatKitTypeError(
            f"register(name=...) takes a string, got {type(name).__name__} {name!r}; "
            f"for example register({DEFAULT_NAME!r})"
        )
    if not name.strip() or name != name.strip():
        raise FormatKitValueError(
            f"register(name=...) needs a non-empty name without surrounding spaces, got {name!r}; "
            f"for example register({DEFAULT_NAME!r})"
        )
    if name in _BUILTIN_NAMES:
        raise FormatKitValueError(
            f"{name!r} is one of transformers' own attention implementations; registering the padding-free "
            f"attention under it would replace it. Use another name, for example register({DEFAULT_NAME!r})."
        )

    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    current = AttentionInterface._global_mapping.get(name)
    if current is not None and current is not varlen_attention_forward and not replace:
        raise FormatKitValueError(
            f"the attention name {name!r} is already registered for {getattr(current, '__qualname__', current)!r}; "
            f"pick another name (register('my_varlen')) or pass replace=True to take it over"
        )
    AttentionInterface.register(name, varlen_attention_forward)
    AttentionMaskInterface.register(name, varlen_attention_mask)
    return name


def varlen_attention_mask(
    batch_size: int,
    q_length: int,
    kv_length: int,
    q_offset: int = 0,
    kv_offset: int = 0,
    mask_function: Callable | None = None,
    attention_mask: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor | None:
    """The mask transformers builds for this attention: the 2-D padding mask, or None where nothing is padded.

    Like the mask of ``flash_attention_2``: the attention function finds sequence boundaries itself, so no dense
    ``(batch, 1, q, kv)`` mask is ever built.

    Args:
        batch_size: Batch size (unused; part of transformers' mask interface).
        q_length: Query length (unused).
        kv_length: Key/value length: the mask is cut to its last ``kv_length`` columns.
        q_offset: Unused.
        kv_offset: Unused.
        mask_function: Unused (causality and windows are applied by the kernel).
        attention_mask: The 2-D padding mask ``(batch, kv)``, or None.
        **kwargs: Further arguments of the interface, ignored.

    Returns:
        None when there is no padding, else the boolean 2-D mask.

    Example:
        >>> import torch
        >>> varlen_attention_mask(2, 3, 3, attention_mask=torch.ones(2, 3, dtype=torch.bool)) is None
        True
        >>> varlen_attention_mask(2, 3, 3, attention_mask=torch.tensor([[1, 1, 1], [0, 1, 1]]).bool())
        tensor([[ True,  True,  True],
                [False,  True,  True]])
    """
    if attention_mask is None:
        return None
    attention_mask = attention_mask[:, -kv_length:]
    if attention_mask.shape[1] == kv_length and bool(attention_mask.all()):
        return None
    return attention_mask


# ----------------------------------------------------------------------------------------------------------------
# the kernel and what it accepts
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Kernel:
    fn: Callable
    params: frozenset[str]


_KERNEL_CACHE: dict[str, _Kernel | None] = {}
_WARNED: set[str] = set()


def _kernel() -> _Kernel | None:
    """PyTorch's ``varlen_attn`` and the keyword arguments this torch's version takes, or None where absent."""
    if "k" not in _KERNEL_CACHE:
        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError:  # torch < 2.10
            _KERNEL_CACHE["k"] = None
        else:
            _KERNEL_CACHE["k"] = _Kernel(varlen_attn, frozenset(inspect.signature(varlen_attn).parameters))
    return _KERNEL_CACHE["k"]


@functools.lru_cache(maxsize=None)
def _capability_ok(index: int) -> bool:
    return torch.cuda.get_device_capability(index) >= (8, 0)


def varlen_kernel_available(device: torch.device | str | None = None) -> bool:
    """Whether PyTorch's variable-length flash attention can run on ``device`` (default: the current CUDA GPU).

    True with torch >= 2.10 on an NVIDIA GPU of compute capability 8.0 (Ampere) or newer. Where False, the
    attention still works through the exact per-sequence fallback.

    Example:
        >>> varlen_kernel_available("cpu")
        False
    """
    if _kernel() is None or not torch.cuda.is_available():
        return False
    device = torch.device("cuda" if device is None else device)
    if device.type != "cuda":
        return False
    return _capability_ok(torch.cuda.current_device() if device.index is None else device.index)


def _warn_once(cause: str, message: str) -> None:
    if cause not in _WARNED:
        _WARNED.add(cause)
        warnings.warn(message, FormatKitWarning, stacklevel=4)


# ----------------------------------------------------------------------------------------------------------------
# sequence boundaries
# ----------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Segments:
    """Where the sequences of a batch lie once its ``batch * length`` tokens are laid end to end."""

    cu_q: torch.Tensor  # int32 (n + 1,): cumulative query lengths
    cu_k: torch.Tensor  # int32 (n + 1,): cumulative key/value lengths
    max_q: int
    max_k: int
    index_q: torch.Tensor | None  # positions of the real query tokens among batch * q_len (None: all are real)
    index_k: torch.Tensor | None


# One-entry cache: every layer of a forward pass receives the same mask / position_ids / cu_seq_lens tensors, so
# the boundaries (which need a device-to-host copy) are derived once per forward pass. Keys hold weak references:
# a live tensor is the same tensor, and its version counter tells an in-place change.
_SEGMENT_CACHE: dict[str, Any] = {}


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


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise FormatKitValueError(f"{what} must be a single number, got a tensor of shape {tuple(value.shape)}")
        return int(value.item())
    if isinstance(value, bool) or not isinstance(value, int):
        raise FormatKitTypeError(f"{what} must be an int, got {type(value).__name__} {value!r}")
    return value


def _checked_cu(cu: Any, total: int, device: torch.device, what: str) -> torch.Tensor:
    if not isinstance(cu, torch.Tensor):
        cu = torch.as_tensor(cu)
    if cu.ndim != 1 or cu.numel() < 2 or cu.dtype.is_floating_point or cu.dtype == torch.bool:
        raise FormatKitValueError(
            f"{what} must be a 1-D integer tensor [0, len_1, len_1 + len_2, ...] with one more entry than "
            f"sequences, got dtype {cu.dtype} and shape {tuple(cu.shape)}"
        )
    values = cu.tolist()
    if values[0] != 0 or values[-1] != total or any(b < a for a, b in zip(values, values[1:])):
        shown = values if len(values) <= 8 else [*values[:4], "...", *values[-2:]]
        raise FormatKitValueError(
            f"{what} = {shown} does not describe this batch of {total} tokens: it must start at 0, never "
            f"decrease, and end at the number of tokens (batch x length). Pass the cu_seq_lens_q/k and "
            f"max_length_q/k made by the collator for this very batch, or leave them out to derive them from "
            f"position_ids."
        )
    return cu.to(device=device, dtype=torch.int32, non_blocking=True)


def _segments_from_cu(
    kwargs: dict[str, Any], batch: int, q_len: int, kv_len: int, device: torch.device
) -> _Segments:
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if cu_k is None:
        cu_k = cu_q
    if cu_q is None:
        cu_q = cu_k
    max_q, max_k = kwargs.get("max_length_q"), kwargs.get("max_length_k")
    key = _cache_key(*(t if isinstance(t, torch.Tensor) else None for t in (cu_q, cu_k)))
    cached = _SEGMENT_CACHE.get("cu")
    if (
        cached is not None
        and not isinstance(max_q, torch.Tensor)
        and not isinstance(max_k, torch.Tensor)
        and cached[0] == (batch, q_len, kv_len, device, max_q, max_k)
        and all(isinstance(t, torch.Tensor) for t in (cu_q, cu_k))
        and _cache_matches(cached[1], (cu_q, cu_k))
    ):
        return cached[2]
    cu_q_t = _checked_cu(cu_q, batch * q_len, device, "cu_seq_lens_q")
    cu_k_t = cu_q_t if cu_k is cu_q else _checked_cu(cu_k, batch * kv_len, device, "cu_seq_lens_k")
    if cu_q_t.numel() != cu_k_t.numel():
        raise FormatKitValueError(
            f"cu_seq_lens_q has {cu_q_t.numel() - 1} sequences but cu_seq_lens_k has {cu_k_t.numel() - 1}; "
            f"both must describe the same sequences"
        )
    lengths_q = cu_q_t.diff()
    derived_q = int(lengths_q.max().item())
    derived_k = derived_q if cu_k_t is cu_q_t else int(cu_k_t.diff().max().item())
    max_q = derived_q if max_q is None else _as_int(max_q, "max_length_q")
    max_k = derived_k if max_k is None else _as_int(max_k, "max_length_k")
    if max_q < derived_q or max_k < derived_k:
        raise FormatKitValueError(
            f"max_length_q/k = {max_q}/{max_k} is shorter than the longest sequence in cu_seq_lens_q/k "
            f"({derived_q}/{derived_k}); pass the values the collator made for this batch, or leave them out"
        )
    segments = _Segments(cu_q_t, cu_k_t, max_q, max_k, None, None)
    if all(isinstance(t, torch.Tensor) for t in (cu_q, cu_k)) and not any(
        isinstance(m, torch.Tensor) for m in (kwargs.get("max_length_q"), kwargs.get("max_length_k"))
    ):
        _SEGMENT_CACHE["cu"] = (
            (batch, q_len, kv_len, device, kwargs.get("max_length_q"), kwargs.get("max_length_k")),
            key,
            segments,
        )
    return segments


def _segments_from_tokens(
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    batch: int,
    q_len: int,
    kv_len: int,
    device: torch.device,
) -> _Segments:
    """Sequence boundaries from a 2-D padding mask and/or position ids (either may be None)."""
    if position_ids is not None and (
        not isinstance(position_ids, torch.Tensor)
        or position_ids.ndim != 2
        or position_ids.shape[-1] != q_len
        or position_ids.shape[0] not in (1, batch)
        or q_len != kv_len
    ):
        # 3-D rotary positions (Qwen2-VL), decoding with a cache, ...: rows are whole sequences
        position_ids = None
    key = (batch, q_len, kv_len, device)
    tensors = (attention_mask, position_ids)
    cached = _SEGMENT_CACHE.get("tokens")
    if cached is not None and cached[0] == key and _cache_matches(cached[1], tensors):
        return cached[2]

    if q_len == kv_len:
        valid = None if attention_mask is None else attention_mask.to(device=device, dtype=torch.bool)
        if position_ids is None:
            starts = torch.zeros(batch, q_len, dtype=torch.bool, device=device)
        else:
            pos = position_ids.to(device).expand(batch, -1)
            starts = torch.ones(batch, q_len, dtype=torch.bool, device=device)
            starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
        starts[:, 0] = True
        if valid is not None:
            prev_valid = torch.ones_like(valid)
            prev_valid[:, 1:] = valid[:, :-1]
            starts = (starts | ~prev_valid) & valid
            index = valid.reshape(-1).nonzero().squeeze(-1)
            starts_real = starts.reshape(-1)[index]
        else:
            index = None
            starts_real = starts.reshape(-1)
        total = starts_real.numel()
        begin = starts_real.nonzero().squeeze(-1).to(torch.int32)
        cu = torch.cat([begin, torch.tensor([total], dtype=torch.int32, device=device)])
        max_len = int(cu.diff().max().item()) if cu.numel() > 1 else 0
        segments = _Segments(cu, cu, max_len, max_len, index, index)
    else:
        # decoding / chunked prefill with a cache: each row is one sequence whose last q_len tokens are queries
        if attention_mask is None:
            cu_q = torch.arange(batch + 1, dtype=torch.int32, device=device) * q_len
            cu_k = torch.arange(batch + 1, dtype=torch.int32, device=device) * kv_len
            segments = _Segments(cu_q, cu_k, q_len, kv_len, None, None)
        else:
            valid_k = attention_mask.to(device=device, dtype=torch.bool)
            valid_q = valid_k[:, -q_len:]
            lengths_k = valid_k.sum(-1, dtype=torch.int32)
            lengths_q = valid_q.sum(-1, dtype=torch.int32)
            cu_k = torch.nn.functional.pad(lengths_k.cumsum(0, dtype=torch.int32), (1, 0))
            cu_q = torch.nn.functional.pad(lengths_q.cumsum(0, dtype=torch.int32), (1, 0))
            segments = _Segments(
                cu_q,
                cu_k,
                int(lengths_q.max().item()),
                int(lengths_k.max().item()),
                valid_q.reshape(-1).nonzero().squeeze(-1),
                valid_k.reshape(-1).nonzero().squeeze(-1),
            )
    _SEGMENT_CACHE["tokens"] = (key, _cache_key(*tensors), segments)
    return segments


# ----------------------------------------------------------------------------------------------------------------
# the two ways to compute it
# ----------------------------------------------------------------------------------------------------------------
def _repeat_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped-query attention: repeat each key/value head for the query heads that share it."""
    n_rep = q.shape[1] // k.shape[1]
    if n_rep == 1:
        return k, v
    return k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)


def _run_kernel(
    kernel: _Kernel,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seg: _Segments,
    scaling: float | None,
    causal: bool,
    window: int | None,
) -> torch.Tensor:
    """``varlen_attn`` on (tokens, heads, dim) tensors, adapting to what this torch's version takes."""
    kw: dict[str, Any] = {}
    if q.shape[1] != k.shape[1] and "enable_gqa" in kernel.params:
        kw["enable_gqa"] = True
    else:
        k, v = _repeat_kv(q, k, v)
    if scaling is not None:
        if "scale" in kernel.params:
            kw["scale"] = scaling
        else:  # the kernel's own scale is 1/sqrt(head_dim)
            q = q * (scaling * math.sqrt(q.shape[-1]))
    if "window_size" in kernel.params:
        left = -1 if window is None else window - 1
        kw["window_size"] = (left, 0) if causal else (left, -1 if window is None else window - 1)
    elif window is not None:
        raise FormatKitValueError(
            f"this torch {torch.__version__} has varlen_attn without window_size, so the sliding window of "
            f"{window} tokens cannot be applied to sequences of up to {max(seg.max_q, seg.max_k)} tokens. "
            f"Upgrade torch (>= 2.11), use attn_implementation='sdpa', or keep sequences within the window."
        )
    elif "is_causal" in kernel.params:
        kw["is_causal"] = causal
    elif causal:
        raise FormatKitValueError(
            f"this torch {torch.__version__} has a varlen_attn that takes neither window_size nor is_causal; "
            f"causal attention cannot be asked of it. Upgrade torch or use attn_implementation='sdpa'."
        )
    out = kernel.fn(q, k, v, seg.cu_q, seg.cu_k, seg.max_q, seg.max_k, **kw)
    return out[0] if isinstance(out, tuple) else out


def _run_per_sequence(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    seg: _Segments,
    scaling: float | None,
    causal: bool,
    window: int | None,
    dropout: float,
) -> torch.Tensor:
    """The exact reference: ``scaled_dot_product_attention`` on each sequence of (tokens, heads, dim) tensors."""
    k, v = _repeat_kv(q, k, v)
    bounds_q, bounds_k = seg.cu_q.tolist(), seg.cu_k.tolist()
    outs = []
    for (q0, q1), (k0, k1) in zip(zip(bounds_q, bounds_q[1:]), zip(bounds_k, bounds_k[1:]), strict=True):
        qi, ki, vi = (t.transpose(0, 1).unsqueeze(0) for t in (q[q0:q1], k[k0:k1], v[k0:k1]))
        lq, lk = q1 - q0, k1 - k0
        mask = None
        is_causal = causal
        if lq == 0:
            outs.append(q.new_zeros(0, q.shape[1], v.shape[-1]))
            continue
        if (causal and lq != lk) or window is not None:
            # queries are the last lq of lk positions (bottom-right alignment, as flash attention does)
            qpos = torch.arange(lk - lq, lk, device=q.device)[:, None]
            kpos = torch.arange(lk, device=q.device)[None, :]
            mask = torch.ones(lq, lk, dtype=torch.bool, device=q.device)
            if causal:
                mask &= kpos <= qpos
            if window is not None:
                mask &= kpos > qpos - window
                if not causal:
                    mask &= kpos < qpos + window
            is_causal = False
        out = torch.nn.functional.scaled_dot_product_attention(
            qi, ki, vi, attn_mask=mask, dropout_p=dropout, is_causal=is_causal, scale=scaling
        )
        outs.append(out.squeeze(0).transpose(0, 1))
    return torch.cat(outs, dim=0)


def _half_dtype(query: torch.Tensor, module: torch.nn.Module) -> torch.dtype | None:
    """The half-precision dtype a float32 query should run in on the kernel, as transformers' flash path does."""
    if query.dtype in (torch.float16, torch.bfloat16):
        return query.dtype
    if query.dtype != torch.float32:
        return None
    if torch.is_autocast_enabled(query.device.type):
        dtype = torch.get_autocast_dtype(query.device.type)
        return dtype if dtype in (torch.float16, torch.bfloat16) else None
    config = getattr(module, "config", None)
    if config is not None and getattr(config, "_is_quantized", False):  # QLoRA: layer norms upcast by peft
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        return dtype if dtype in (torch.float16, torch.bfloat16) else None
    return None


# ----------------------------------------------------------------------------------------------------------------
# the attention function
# ----------------------------------------------------------------------------------------------------------------
def varlen_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    is_causal: bool | None = None,
    s_aux: torch.Tensor | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Attention for transformers' ``AttentionInterface`` on flattened (padding-free) or padded batches.

    Called by the model's attention layers once :func:`register` has made its name known; the arguments are
    those transformers passes to every attention function.

    Args:
        module: The attention layer (its ``is_causal``, ``config`` and ``training`` are read).
        query: ``(batch, heads, q_len, head_dim)``.
        key: ``(batch, kv_heads, kv_len, head_dim)``; ``heads`` must be a multiple of ``kv_heads``.
        value: ``(batch, kv_heads, kv_len, head_dim)``.
        attention_mask: None (flattened or unpadded batch), a 2-D padding mask ``(batch, kv_len)``, or a 4-D mask
            made by the caller (then transformers' ``sdpa`` computes the attention with it).
        dropout: Attention dropout probability (the model passes 0.0 outside training).
        scaling: Softmax scale; default ``1 / sqrt(head_dim)``.
        sliding_window: Attend to at most this many positions (the current one included), or None.
        softcap: Not supported: raises.
        is_causal: Overrides ``module.is_causal``.
        s_aux: Attention sinks: not supported, raises.
        **kwargs: ``cu_seq_lens_q``, ``cu_seq_lens_k``, ``max_length_q``, ``max_length_k`` (from the collator),
            ``position_ids``; anything else is ignored.

    Returns:
        ``(attn_output, None)`` with ``attn_output`` of shape ``(batch, q_len, heads, head_dim)``.

    Raises:
        FormatKitValueError: soft-capping, attention sinks, inconsistent ``cu_seq_lens``, or a sliding window the
            installed torch cannot apply.
    """
    if softcap is not None:
        raise FormatKitValueError(
            f"the padding-free varlen attention cannot apply attention-logit soft-capping (softcap={softcap}, "
            f"as in Gemma 2): PyTorch's varlen_attn has no soft-capping. Use attn_implementation='eager' or "
            f"'flex_attention' for this model, or set config.attn_logit_softcapping = None if you accept the "
            f"change."
        )
    if s_aux is not None:
        raise FormatKitValueError(
            "the padding-free varlen attention cannot apply attention sinks (s_aux, as in gpt-oss): PyTorch's "
            "varlen_attn has no sink term. Use attn_implementation='eager' or 'flex_attention' for this model."
        )
    if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 4:
        # a custom 4-D mask (prefix tuning, a mask made by the caller): only a dense-mask kernel can apply it
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal,
            **kwargs,
        )
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.ndim != 2):
        raise FormatKitTypeError(
            f"the padding-free varlen attention takes a 2-D padding mask (batch, kv_len) or None, got "
            f"{type(attention_mask).__name__} of shape {tuple(getattr(attention_mask, 'shape', ()))}; "
            f"was the model's attention set with register()'s name rather than 'flex_attention'?"
        )

    batch, heads, q_len, head_dim = query.shape
    kv_heads, kv_len, v_dim = key.shape[1], key.shape[2], value.shape[-1]
    if heads % kv_heads:
        raise FormatKitValueError(
            f"grouped-query attention needs the query heads to be a multiple of the key/value heads, got "
            f"{heads} query heads and {kv_heads} key/value heads"
        )
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    device = query.device

    if attention_mask is None and any(kwargs.get(k) is not None for k in ("cu_seq_lens_q", "cu_seq_lens_k")):
        seg = _segments_from_cu(kwargs, batch, q_len, kv_len, device)
    else:
        seg = _segments_from_tokens(attention_mask, kwargs.get("position_ids"), batch, q_len, kv_len, device)
    window = None
    if sliding_window is not None and max(seg.max_q, seg.max_k) > sliding_window:
        window = int(sliding_window)

    # (batch, heads, len, dim) -> (batch * len, heads, dim), real tokens only
    q = query.transpose(1, 2).reshape(batch * q_len, heads, head_dim)
    k = key.transpose(1, 2).reshape(batch * kv_len, kv_heads, head_dim)
    v = value.transpose(1, 2).reshape(batch * kv_len, kv_heads, v_dim)
    if seg.index_q is not None:
        q = q.index_select(0, seg.index_q)
    if seg.index_k is not None:
        k = k.index_select(0, seg.index_k)
        v = v.index_select(0, seg.index_k)

    kernel = _kernel()
    run_dtype = _half_dtype(query, module)
    use_kernel = device.type == "cuda" and kernel is not None and run_dtype is not None and dropout == 0.0
    if use_kernel and not varlen_kernel_available(device):
        use_kernel = False
    if device.type == "cuda" and not use_kernel:
        reason = (
            "torch < 2.10 has no torch.nn.attention.varlen"
            if kernel is None
            else "attention dropout in training"
            if dropout
            else f"{query.dtype} inputs (the kernel takes float16/bfloat16: load the model with "
            f"dtype=torch.bfloat16 or train under autocast)"
            if run_dtype is None
            else "a GPU older than Ampere (compute capability 8.0)"
        )
        _warn_once(
            f"fallback:{reason}",
            f"padding-free varlen attention falls back to one scaled_dot_product_attention call per sequence "
            f"(exact, but slower) because of {reason}.",
        )

    if use_kernel:
        in_dtype = q.dtype
        if v_dim != head_dim:  # flash kernels need equal head dims: pad value, crop the output
            v = torch.nn.functional.pad(v, (0, head_dim - v_dim)) if v_dim < head_dim else v
        if v.shape[-1] != head_dim:
            raise FormatKitValueError(
                f"the varlen kernel needs value head dim <= query head dim, got {v_dim} > {head_dim}"
            )
        q, k, v = (t.to(run_dtype) for t in (q, k, v))
        out = _run_kernel(kernel, q, k, v, seg, scaling, causal, window)[..., :v_dim].to(in_dtype)
    else:
        out = _run_per_sequence(q, k, v, seg, scaling, causal, window, dropout)

    if seg.index_q is not None:
        full = out.new_zeros(batch * q_len, heads, v_dim)
        out = full.index_copy(0, seg.index_q, out)
    return out.reshape(batch, q_len, heads, v_dim), None
