"""trl-formatkit: the data side of LLM fine-tuning with trl, restored, correct and fast.

Public names load lazily (PEP 562), so ``import trl_formatkit`` stays light: the collator does not pull in
trl or datasets, and the GPU benchmark machine (torch + transformers only) can import what it needs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> submodule that defines it. Add a line here when a module gains a public name.
_LAZY: dict[str, str] = {
    # errors
    "FormatKitError": "errors",
    "FormatKitValueError": "errors",
    "FormatKitTypeError": "errors",
    "FormatKitKeyError": "errors",
    "TemplateNotFoundError": "errors",
    "FormatKitWarning": "errors",
    # masking / collators
    "IGNORE_INDEX": "masking",
    "DataCollatorForCompletionOnlyLM": "collators",
    # masks from a conversation's structure
    "encode_conversation": "structure",
    "encode_conversations": "structure",
    "find_template_markers": "structure",
    # what a person looks at
    "trained_tokens": "views",
    "show_trained": "views",
    # formats / plugins (`formats` is the default registry: the trl_formatkit.formats module itself)
    "Format": "formats",
    "FormatRegistry": "formats",
    "formats": "formats",
    "register_format": "formats",
    "detect_format": "formats",
    "to_messages": "formats",
    "batched_formatting_func": "formats",
    "check_formatting_func": "formats",
    "check_formatted_text": "formats",
    "FORMAT_MAPPING": "formats",
    "conversations_formatting_function": "formats",
    "instructions_formatting_function": "formats",
    "get_formatting_func_from_dataset": "formats",
    "hookimpl": "hookspecs",
    # special-token hygiene
    "AuditFinding": "special_tokens",
    "AuditReport": "special_tokens",
    "audit_tokenizer": "special_tokens",
    "fix_special_tokens": "special_tokens",
    "SafeSpecialTokensMixin": "special_tokens",
    "safe_tokenizer": "special_tokens",
    "add_chat_template": "special_tokens",
    "CHAT_TEMPLATES": "special_tokens",
    "resize_embeddings": "special_tokens",
    "new_token_lora_kwargs": "special_tokens",
    "setup_chat_format": "special_tokens",
    # packing
    "ConstantLengthDataset": "packing",
    # training
    "SFTTrainer": "sft",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trl_formatkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # cache: the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from .collators import DataCollatorForCompletionOnlyLM
    from .errors import (
        FormatKitError,
        FormatKitKeyError,
        FormatKitTypeError,
        FormatKitValueError,
        FormatKitWarning,
        TemplateNotFoundError,
    )
    from .formats import (
        FORMAT_MAPPING,
        Format,
        FormatRegistry,
        batched_formatting_func,
        check_formatted_text,
        check_formatting_func,
        conversations_formatting_function,
        detect_format,
        formats,
        get_formatting_func_from_dataset,
        instructions_formatting_function,
        register_format,
        to_messages,
    )
    from .hookspecs import hookimpl
    from .views import show_trained, trained_tokens
    from .masking import IGNORE_INDEX
    from .packing import ConstantLengthDataset
    from .sft import SFTTrainer
    from .structure import encode_conversation, encode_conversations, find_template_markers
    from .special_tokens import (
        CHAT_TEMPLATES,
        AuditFinding,
        AuditReport,
        SafeSpecialTokensMixin,
        add_chat_template,
        audit_tokenizer,
        fix_special_tokens,
        new_token_lora_kwargs,
        resize_embeddings,
        safe_tokenizer,
        setup_chat_format,
    )
