"""Making the attention known to transformers: the attention function and its (absent) dense mask."""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import FormatKitTypeError, FormatKitValueError
from . import kernels
from .forward import varlen_attention_forward

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


def _check_name(name: Any) -> None:
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
    _check_name(name)
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
    kernels.varlen_kernel_available()  # looked up now, outside any torch.compile trace
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
    ``(batch, 1, q, kv)`` mask is ever built. Under ``torch.compile`` the 2-D mask is passed on as it is (the
    all-ones test would need its value on the host).

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
    if torch.compiler.is_compiling():
        return attention_mask
    if attention_mask.shape[1] == kv_length and bool(attention_mask.all()):
        return None
    return attention_mask
