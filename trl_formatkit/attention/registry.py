"""Making the attention known to transformers: the attention function and its (absent) dense mask."""

from __future__ import annotations

import functools
import inspect
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


# Names this package's attention is registered under (the models whose masks need no packed-sequence detection).
_REGISTERED: set[str] = set()
_NEEDED = ("config", "attention_mask", "past_key_values", "position_ids")


def _without_packed_detection(original: Callable) -> Callable | None:
    """``original`` (transformers' ``_preprocess_mask_arguments``), but for models on this attention it does not look
    for packed sequences in ``position_ids``.

    transformers checks ``(packed_sequence_mask[:, -1] == 0).all()`` in a Python ``if`` on every forward pass of a
    flattened batch: a device-to-host synchronisation, the host waiting at each forward pass for the GPU to finish
    what was queued before it. What it finds only shapes the mask function handed to
    :func:`varlen_attention_mask`, which ignores it (the attention finds the sequences itself), so for this
    attention the check is skipped: same results, no wait. None where the signature is not the expected one.
    """
    try:
        names = list(inspect.signature(original).parameters)
    except (TypeError, ValueError):
        return None
    if not all(n in names for n in _NEEDED):
        return None
    at = {n: names.index(n) for n in _NEEDED}

    @functools.wraps(original)
    def preprocess(*args: Any, **kwargs: Any):
        def arg(n: str) -> Any:
            return args[at[n]] if len(args) > at[n] else kwargs.get(n)

        if (
            getattr(arg("config"), "_attn_implementation", None) in _REGISTERED
            and arg("attention_mask") is None
            and arg("past_key_values") is None
            and arg("position_ids") is not None
        ):
            if len(args) > at["position_ids"]:
                args = (*args[: at["position_ids"]], None, *args[at["position_ids"] + 1 :])
            else:
                kwargs["position_ids"] = None
        return original(*args, **kwargs)

    preprocess.__formatkit_original__ = original  # type: ignore[attr-defined]
    return preprocess


def _skip_packed_detection() -> None:
    """Install :func:`_without_packed_detection` in ``transformers.masking_utils`` once."""
    from transformers import masking_utils

    original = getattr(masking_utils, "_preprocess_mask_arguments", None)
    if original is None or hasattr(original, "__formatkit_original__"):
        return
    wrapped = _without_packed_detection(original)
    if wrapped is not None:
        masking_utils._preprocess_mask_arguments = wrapped


def register(name: str = DEFAULT_NAME, *, replace: bool = False) -> str:
    """Register the padding-free attention in transformers under ``name`` and return ``name``.

    Adds :func:`varlen_attention_forward` to ``transformers.AttentionInterface`` and :func:`varlen_attention_mask`
    to ``transformers.masking_utils.AttentionMaskInterface`` (so that no dense 4-D mask is built for flattened
    batches, as with ``flash_attention_2``). For models on this attention, transformers' search for packed
    sequences in ``position_ids`` is skipped: it costs a device-to-host synchronisation on every forward pass and
    only shapes a mask this attention does not use. Calling it again with the same name does nothing more.

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
    _REGISTERED.add(name)
    _skip_packed_detection()
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
