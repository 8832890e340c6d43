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
  batch work too). With the collator's metadata nothing is copied from the GPU to the host: the values are checked
  by a device-side assertion, so steps run back to back; the path also traces under ``torch.compile`` without a
  graph break (module :mod:`~trl_formatkit.attention.segments`).
- **Padded batches** (a 2-D ``attention_mask``, left or right padding): the padding is dropped before the
  kernel and restored after it, as transformers' flash-attention path does; generation with a KV cache works. A
  0 in the middle of a row's mask is no sequence boundary: the tokens after it attend to those before it, as in
  ``eager``.
- Grouped-query attention (fewer key/value heads than query heads), the model's ``scaling``, causal and
  bidirectional modules, and sliding windows (Mistral, Qwen2, Phi-3) are handled.
- What the kernel cannot do raises :class:`~trl_formatkit.errors.FormatKitValueError` naming the fix:
  attention-logit soft-capping (Gemma 2), attention sinks (``s_aux``), a sliding window on a torch whose
  ``varlen_attn`` has no ``window_size``. A 4-D mask made by the caller is passed on to transformers' ``sdpa``.

Where the kernel cannot run (a CPU tensor, float32 without autocast, torch < 2.10, a GPU older than Ampere,
attention dropout in training), an exact fallback computes the same function with
``scaled_dot_product_attention`` (module :mod:`~trl_formatkit.attention.kernels`): one call with a block-diagonal
mask built on the device, or one call per sequence for dropout and very long batches. That is what runs in the CPU
tests. On CUDA the fallback is announced once with a :class:`~trl_formatkit.errors.FormatKitWarning`.

Accuracy and speed, measured on an H100 (bf16 error against float32, loss at initialisation, tokens/s padded
against flattened, eager and compiled): ``benchmarks/RESULTS.md``, section ``padded_vs_flat``.

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

from .forward import varlen_attention_forward
from .kernels import varlen_kernel_available
from .registry import DEFAULT_NAME, register, varlen_attention_mask

__all__ = [
    "DEFAULT_NAME",
    "register",
    "varlen_attention_forward",
    "varlen_attention_mask",
    "varlen_kernel_available",
]
