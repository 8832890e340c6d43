"""The attention function transformers calls: checks what it was given, finds the sequences, runs a path."""

from __future__ import annotations

from typing import Any

import torch

from ..errors import FormatKitTypeError, FormatKitValueError, warn
from . import kernels
from .segments import Segments, segments_from_cu, segments_from_tokens

_WARNED: set[str] = set()


def _warn_once(reason: str) -> None:
    if reason not in _WARNED and not torch.compiler.is_compiling():
        _WARNED.add(reason)
        warn(
            f"padding-free varlen attention falls back to scaled_dot_product_attention without the varlen kernel "
            f"(exact, but slower) because of {reason}."
        )


def _refuse_unsupported(softcap: float | None, s_aux: torch.Tensor | None) -> None:
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


def _check_inputs(attention_mask: Any, query: torch.Tensor, key: torch.Tensor) -> None:
    if attention_mask is not None and (not isinstance(attention_mask, torch.Tensor) or attention_mask.ndim != 2):
        raise FormatKitTypeError(
            f"the padding-free varlen attention takes a 2-D padding mask (batch, kv_len) or None, got "
            f"{type(attention_mask).__name__} of shape {tuple(getattr(attention_mask, 'shape', ()))}; "
            f"was the model's attention set with register()'s name rather than 'flex_attention'?"
        )
    heads, kv_heads = query.shape[1], key.shape[1]
    if heads % kv_heads:
        raise FormatKitValueError(
            f"grouped-query attention needs the query heads to be a multiple of the key/value heads, got "
            f"{heads} query heads and {kv_heads} key/value heads"
        )


def _segments(attention_mask: torch.Tensor | None, kwargs: dict, query: torch.Tensor, key: torch.Tensor) -> Segments:
    batch, q_len, kv_len = query.shape[0], query.shape[2], key.shape[2]
    cu_q, cu_k = kwargs.get("cu_seq_lens_q"), kwargs.get("cu_seq_lens_k")
    if attention_mask is None and (cu_q is not None or cu_k is not None):
        return segments_from_cu(
            cu_q, cu_k, kwargs.get("max_length_q"), kwargs.get("max_length_k"), batch, q_len, kv_len, query.device
        )
    return segments_from_tokens(attention_mask, kwargs.get("position_ids"), batch, q_len, kv_len, query.device)


def _real_tokens(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, seg: Segments) -> tuple:
    """(batch, heads, len, dim) -> (real tokens, heads, dim) for q, k and v."""
    q = query.transpose(1, 2).flatten(0, 1)
    k = key.transpose(1, 2).flatten(0, 1)
    v = value.transpose(1, 2).flatten(0, 1)
    if seg.index_q is not None:
        q = q.index_select(0, seg.index_q)
    if seg.index_k is not None:
        k, v = k.index_select(0, seg.index_k), v.index_select(0, seg.index_k)
    return q, k, v


def _on_kernel(q, k, v, seg: Segments, run_dtype: torch.dtype, spec: kernels.Spec) -> torch.Tensor:
    head_dim, v_dim = q.shape[-1], v.shape[-1]
    if v_dim > head_dim:
        raise FormatKitValueError(f"the varlen kernel needs value head dim <= query head dim, got {v_dim} > {head_dim}")
    if v_dim < head_dim:  # flash kernels need equal head dims: pad value, crop the output
        v = torch.nn.functional.pad(v, (0, head_dim - v_dim))
    if q.dtype != run_dtype or k.dtype != run_dtype or v.dtype != run_dtype:
        out = kernels.run_kernel(kernels.kernel(), q.to(run_dtype), k.to(run_dtype), v.to(run_dtype), seg, spec)
        return out[..., :v_dim].to(q.dtype)
    out = kernels.run_kernel(kernels.kernel(), q, k, v, seg, spec)
    return out if v_dim == head_dim else out[..., :v_dim]


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

    Called by the model's attention layers once :func:`~trl_formatkit.attention.register` has made its name
    known; the arguments are those transformers passes to every attention function.

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
    _refuse_unsupported(softcap, s_aux)
    if isinstance(attention_mask, torch.Tensor) and attention_mask.ndim == 4:
        # a custom 4-D mask (prefix tuning, a mask made by the caller): only a dense-mask kernel can apply it
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, is_causal=is_causal,
            **kwargs,
        )
    _check_inputs(attention_mask, query, key)
    batch, heads, q_len, _ = query.shape
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    seg = _segments(attention_mask, kwargs, query, key)
    window = None
    if sliding_window is not None and max(seg.max_q, seg.max_k) > sliding_window:
        window = int(sliding_window)
    spec = kernels.Spec(scaling, causal, window, dropout)
    q, k, v = _real_tokens(query, key, value, seg)
    path, run_dtype, reason = kernels.choose_path(query, module, dropout, q.shape[0], k.shape[0])
    if reason is not None:
        _warn_once(reason)
    if path == "kernel":
        out = _on_kernel(q, k, v, seg, run_dtype, spec)
    elif path == "masked":
        out = kernels.run_masked(q, k, v, seg, spec)
    else:
        out = kernels.run_per_sequence(q, k, v, seg, spec)
    if seg.index_q is not None:
        out = out.new_zeros(batch * q_len, heads, out.shape[-1]).index_copy(0, seg.index_q, out)
    if seg.holes is not None:  # a 0 inside a row's mask: those outputs as eager computes them
        q_all = query.transpose(1, 2).flatten(0, 1)
        out = out.index_copy(0, seg.holes, kernels.hole_outputs(q_all, k, v, seg, q_len, spec))
    return out.reshape(batch, q_len, heads, out.shape[-1]), None
