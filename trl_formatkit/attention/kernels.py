"""The three ways this package computes attention over variable-length sequences, and which one runs.

All take ``(tokens, heads, head_dim)`` tensors holding only real tokens, laid end to end as
:class:`~trl_formatkit.attention.segments.Segments` describes, and return ``(tokens, heads, v_dim)``:

- ``kernel``: PyTorch's ``varlen_attn`` (flash attention, torch >= 2.10, CUDA, Ampere or newer, fp16/bf16);
- ``masked``: one ``scaled_dot_product_attention`` call with a block-diagonal boolean mask built on the device
  (no host round trip, traceable by ``torch.compile``), for batches of up to ``MASKED_MAX_ELEMENTS`` query x key
  pairs;
- ``per_sequence``: one ``scaled_dot_product_attention`` call per sequence, the exact reference (and the only path
  that draws attention dropout the way ``sdpa`` on each sequence does).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable, Literal

import torch

from ..errors import FormatKitValueError
from .segments import Segments

Path = Literal["kernel", "masked", "per_sequence"]

# the masked path holds a (queries x keys) boolean mask, and sdpa's math kernel heads x that many scores
MASKED_MAX_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class Spec:
    """What the attention layer asks for, beyond the tokens.

    Attributes:
        scaling: Softmax scale; None for ``1 / sqrt(head_dim)``.
        causal: Each query sees only the keys at or before its own position.
        window: Sliding window (positions seen, the own one included), or None.
        dropout: Attention dropout probability.
    """

    scaling: float | None = None
    causal: bool = True
    window: int | None = None
    dropout: float = 0.0


@dataclass(frozen=True)
class Kernel:
    """PyTorch's ``varlen_attn`` and the keyword arguments this torch's version of it takes."""

    fn: Callable
    params: frozenset[str]


_KERNEL_CACHE: dict[str, Kernel | None] = {}
_CAPABLE: dict[int, bool] = {}


def kernel() -> Kernel | None:
    """PyTorch's ``varlen_attn`` and its parameters, or None on torch < 2.10 (looked up once)."""
    if "k" not in _KERNEL_CACHE:
        try:
            from torch.nn.attention.varlen import varlen_attn
        except ImportError:  # torch < 2.10
            _KERNEL_CACHE["k"] = None
        else:
            _KERNEL_CACHE["k"] = Kernel(varlen_attn, frozenset(inspect.signature(varlen_attn).parameters))
    return _KERNEL_CACHE["k"]


def _capable(index: int) -> bool:
    if index not in _CAPABLE:
        _CAPABLE[index] = torch.cuda.get_device_capability(index) >= (8, 0)
    return _CAPABLE[index]


def varlen_kernel_available(device: torch.device | str | None = None) -> bool:
    """Whether PyTorch's variable-length flash attention can run on ``device`` (default: the current CUDA GPU).

    True with torch >= 2.10 on an NVIDIA GPU of compute capability 8.0 (Ampere) or newer. Where False, the
    attention still works through the exact fallbacks.

    Example:
        >>> varlen_kernel_available("cpu")
        False
    """
    if kernel() is None or not torch.cuda.is_available():
        return False
    device = torch.device("cuda" if device is None else device)
    if device.type != "cuda":
        return False
    return _capable(torch.cuda.current_device() if device.index is None else device.index)


def half_dtype(query: torch.Tensor, module: torch.nn.Module) -> torch.dtype | None:
    """The half-precision dtype a query should run in on the kernel, as transformers' flash path does."""
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


def choose_path(
    query: torch.Tensor, module: torch.nn.Module, dropout: float, n_q: int, n_k: int
) -> tuple[Path, torch.dtype | None, str | None]:
    """Which computation runs, the dtype the kernel runs in, and why a CUDA tensor misses the kernel (or None).

    Example:
        >>> q = torch.zeros(1, 2, 5, 8)
        >>> choose_path(q, torch.nn.Module(), 0.0, 5, 5)
        ('masked', None, None)
        >>> choose_path(q, torch.nn.Module(), 0.1, 5, 5)[0]
        'per_sequence'
    """
    run_dtype = half_dtype(query, module)
    cuda = query.device.type == "cuda"
    if cuda and run_dtype is not None and not dropout and varlen_kernel_available(query.device):
        return "kernel", run_dtype, None
    fallback: Path = "masked" if not dropout and n_q * n_k <= MASKED_MAX_ELEMENTS else "per_sequence"
    if not cuda:
        return fallback, None, None
    if kernel() is None:
        reason = "torch < 2.10 has no torch.nn.attention.varlen"
    elif dropout:
        reason = "attention dropout in training"
    elif run_dtype is None:
        reason = (
            f"{query.dtype} inputs (the kernel takes float16/bfloat16: load the model with "
            f"dtype=torch.bfloat16 or train under autocast)"
        )
    else:
        reason = "a GPU older than Ampere (compute capability 8.0)"
    return fallback, None, reason


def repeat_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped-query attention: repeat each key/value head for the query heads that share it."""
    n_rep = q.shape[1] // k.shape[1]
    if n_rep == 1:
        return k, v
    return k.repeat_interleave(n_rep, dim=1), v.repeat_interleave(n_rep, dim=1)


def _window(spec: Spec) -> tuple[int, int]:
    """Flash attention's (left, right) window: -1 is unbounded, (-1, 0) causal."""
    left = -1 if spec.window is None else spec.window - 1
    return (left, 0) if spec.causal else (left, left)


def _window_kwargs(krn: Kernel, seg: Segments, spec: Spec) -> dict[str, Any]:
    window = spec.window
    if "window_size" in krn.params:
        return {"window_size": _window(spec)}
    if window is not None:
        raise FormatKitValueError(
            f"this torch {torch.__version__} has varlen_attn without window_size, so the sliding window of "
            f"{window} tokens cannot be applied to sequences of up to {max(seg.max_q, seg.max_k)} tokens. "
            f"Upgrade torch (>= 2.11), use attn_implementation='sdpa', or keep sequences within the window."
        )
    if "is_causal" in krn.params:
        return {"is_causal": spec.causal}
    if spec.causal:
        raise FormatKitValueError(
            f"this torch {torch.__version__} has a varlen_attn that takes neither window_size nor is_causal; "
            f"causal attention cannot be asked of it. Upgrade torch or use attn_implementation='sdpa'."
        )
    return {}


class _FlashVarlen(torch.autograd.Function):
    """The flash kernels ``varlen_attn`` runs, called straight through ``torch.ops.aten`` in eager mode.

    ``varlen_attn`` reaches the same two kernels through two Python custom ops (forward and backward), whose
    dispatch costs host time in every layer of every step; a step of a small model is host-bound, so that time is
    the user's. Same kernels, same arguments, so the results are bitwise those of ``varlen_attn``. Under
    ``torch.compile`` the custom op runs instead (the traced path).
    """

    @staticmethod
    def forward(ctx, q, k, v, cu_q, cu_k, max_q, max_k, causal, scale, left, right):  # noqa: D102
        out, lse, rng, unused, _ = torch.ops.aten._flash_attention_forward(
            q, k, v, cu_q, cu_k, max_q, max_k, 0.0, causal, False,
            scale=scale, window_size_left=left, window_size_right=right,
        )
        ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k, rng, unused)
        ctx.args = (max_q, max_k, causal, scale, left, right)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        q, k, v, out, lse, cu_q, cu_k, rng, unused = ctx.saved_tensors
        max_q, max_k, causal, scale, left, right = ctx.args
        dq, dk, dv = torch.ops.aten._flash_attention_backward(
            grad_out.contiguous(), q, k, v, out, lse, cu_q, cu_k, max_q, max_k, 0.0, causal, rng, unused,
            scale=scale, window_size_left=left, window_size_right=right,
        )
        return dq, dk, dv, None, None, None, None, None, None, None, None


# Off only to compare against the custom op (benchmarks/host_time.py).
EAGER_DIRECT = True
_ATEN_FLASH: dict[str, bool] = {}


def _aten_flash_takes_windows() -> bool:
    """Whether this torch's ``aten._flash_attention_forward`` takes the window arguments (looked up once)."""
    if "ok" not in _ATEN_FLASH:
        try:
            schema = str(torch.ops.aten._flash_attention_forward.default._schema)
        except (AttributeError, RuntimeError):
            schema = ""
        _ATEN_FLASH["ok"] = "window_size_left" in schema and "window_size_right" in schema
    return _ATEN_FLASH["ok"]


def _direct(q: torch.Tensor) -> bool:
    return EAGER_DIRECT and q.is_cuda and not torch.compiler.is_compiling() and _aten_flash_takes_windows()


def run_kernel(krn: Kernel, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg: Segments, spec: Spec):
    """``varlen_attn`` on (tokens, heads, dim) tensors, adapting to what this torch's version takes."""
    if _direct(q):
        left, right = _window(spec)
        return _FlashVarlen.apply(
            q, k, v, seg.cu_q, seg.cu_k, seg.max_q, seg.max_k, (left, right) == (-1, 0), spec.scaling, left, right
        )
    kw: dict[str, Any] = {}
    if q.shape[1] != k.shape[1] and "enable_gqa" in krn.params:
        kw["enable_gqa"] = True
    else:
        k, v = repeat_kv(q, k, v)
    if spec.scaling is not None:
        if "scale" in krn.params:
            kw["scale"] = spec.scaling
        else:  # the kernel's own scale is 1/sqrt(head_dim)
            q = q * (spec.scaling * math.sqrt(q.shape[-1]))
    kw.update(_window_kwargs(krn, seg, spec))
    out = krn.fn(q, k, v, seg.cu_q, seg.cu_k, seg.max_q, seg.max_k, **kw)
    return out[0] if isinstance(out, tuple) else out


def block_mask(seg: Segments, n_q: int, n_k: int, spec: Spec) -> torch.Tensor:
    """The ``(n_q, n_k)`` boolean mask of who attends to whom, built on the device from ``cu_seq_lens`` alone.

    Queries are the last ``len_q`` of their sequence's ``len_k`` positions (bottom-right, as flash attention).

    Example:
        >>> cu = torch.tensor([0, 2, 3], dtype=torch.int32)
        >>> block_mask(Segments(cu, cu, 2, 2, None, None), 3, 3, Spec(causal=True)).int()
        tensor([[1, 0, 0],
                [1, 1, 0],
                [0, 0, 1]], dtype=torch.int32)
    """
    cu_q, cu_k = seg.cu_q, seg.cu_k
    tq = torch.arange(n_q, device=cu_q.device, dtype=cu_q.dtype)
    tk = torch.arange(n_k, device=cu_k.device, dtype=cu_k.dtype)
    sq = torch.searchsorted(cu_q[1:].contiguous(), tq, right=True)  # sequence of each query token
    sk = torch.searchsorted(cu_k[1:].contiguous(), tk, right=True)
    qpos = (tq - cu_q[sq] + (cu_k.diff() - cu_q.diff())[sq])[:, None]  # position among its sequence's keys
    kpos = (tk - cu_k[sk])[None, :]
    mask = sq[:, None] == sk[None, :]
    if spec.causal:
        mask = mask & (kpos <= qpos)
    if spec.window is not None:
        mask = mask & (kpos > qpos - spec.window)
        if not spec.causal:
            mask = mask & (kpos < qpos + spec.window)
    return mask


def _sdpa_tokens(q, k, v, mask: torch.Tensor | None, spec: Spec, is_causal: bool = False) -> torch.Tensor:
    """``scaled_dot_product_attention`` on (tokens, heads, dim) tensors, key/value heads repeated for GQA."""
    k, v = repeat_kv(q, k, v)
    out = torch.nn.functional.scaled_dot_product_attention(
        *(t.transpose(0, 1).unsqueeze(0) for t in (q, k, v)), attn_mask=mask, dropout_p=spec.dropout,
        is_causal=is_causal, scale=spec.scaling,
    )
    return out.squeeze(0).transpose(0, 1)


def run_masked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg: Segments, spec: Spec) -> torch.Tensor:
    """One ``scaled_dot_product_attention`` call over all sequences with :func:`block_mask` (no dropout)."""
    return _sdpa_tokens(q, k, v, block_mask(seg, q.shape[0], k.shape[0], spec), spec)


def run_per_sequence(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg: Segments, spec: Spec) -> torch.Tensor:
    """The exact reference: ``scaled_dot_product_attention`` on each sequence of (tokens, heads, dim) tensors."""
    bounds_q, bounds_k = seg.cu_q.tolist(), seg.cu_k.tolist()
    outs = []
    for (q0, q1), (k0, k1) in zip(zip(bounds_q, bounds_q[1:]), zip(bounds_k, bounds_k[1:]), strict=True):
        if q1 == q0:
            continue
        mask = None
        if (spec.causal and q1 - q0 != k1 - k0) or spec.window is not None:
            one = Segments(*(torch.tensor([0, n]) for n in (q1 - q0, k1 - k0)), q1 - q0, k1 - k0, None, None)
            mask = block_mask(one, q1 - q0, k1 - k0, spec).to(q.device)
        outs.append(_sdpa_tokens(q[q0:q1], k[k0:k1], v[k0:k1], mask, spec, is_causal=spec.causal and mask is None))
    if not outs:
        return q.new_zeros(0, q.shape[1], v.shape[-1])
    return torch.cat(outs, dim=0)


def hole_outputs(q_all: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg: Segments, length: int, spec: Spec):
    """What ``eager`` computes at the masked tokens inside a row (``seg.holes``): attention to the real tokens of
    their row before them (all of the row's real tokens for a bidirectional module).

    ``q_all`` holds all ``batch * length`` queries, ``k`` / ``v`` the real tokens only (``seg.index_k``).
    """
    holes, keys = seg.holes, seg.index_k
    q = q_all.index_select(0, holes)
    mask = (holes // length)[:, None] == (keys // length)[None, :]
    if spec.causal:
        mask = mask & ((keys % length)[None, :] < (holes % length)[:, None])
    return _sdpa_tokens(q, k.to(q.dtype), v.to(q.dtype), mask, Spec(spec.scaling, spec.causal, None, 0.0))
