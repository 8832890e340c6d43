"""Old import paths on new trl: ``patch_trl()`` puts back what trl removed, backed by trl-formatkit.

After ``trl_formatkit.legacy.patch_trl()``, code written for trl 0.x imports again unchanged::

    from trl import DataCollatorForCompletionOnlyLM, setup_chat_format
    from trl.trainer.utils import DataCollatorForCompletionOnlyLM
    from trl.extras.dataset_formatting import FORMAT_MAPPING, conversations_formatting_function
    from trl.trainer import ConstantLengthDataset  # also trl.trainer.utils.ConstantLengthDataset

Nothing trl still has is replaced (unless ``force=True``), so on an old trl the call changes nothing.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__all__ = ["patch_trl", "LEGACY_NAMES"]

# (module where trl 0.x had it, name) -> (trl_formatkit module, name)
LEGACY_NAMES: dict[tuple[str, str], tuple[str, str]] = {
    ("trl", "DataCollatorForCompletionOnlyLM"): ("trl_formatkit.collators", "DataCollatorForCompletionOnlyLM"),
    ("trl.trainer", "DataCollatorForCompletionOnlyLM"): ("trl_formatkit.collators", "DataCollatorForCompletionOnlyLM"),
    ("trl.trainer.utils", "DataCollatorForCompletionOnlyLM"): (
        "trl_formatkit.collators",
        "DataCollatorForCompletionOnlyLM",
    ),
    ("trl.trainer", "ConstantLengthDataset"): ("trl_formatkit.packing", "ConstantLengthDataset"),
    ("trl.trainer.utils", "ConstantLengthDataset"): ("trl_formatkit.packing", "ConstantLengthDataset"),
    ("trl", "setup_chat_format"): ("trl_formatkit.special_tokens", "setup_chat_format"),
    ("trl.models", "setup_chat_format"): ("trl_formatkit.special_tokens", "setup_chat_format"),
    ("trl.models.utils", "setup_chat_format"): ("trl_formatkit.special_tokens", "setup_chat_format"),
}
_DATASET_FORMATTING = "trl.extras.dataset_formatting"
_DATASET_FORMATTING_NAMES = (
    "FORMAT_MAPPING",
    "conversations_formatting_function",
    "instructions_formatting_function",
    "get_formatting_func_from_dataset",
)


def patch_trl(*, force: bool = False) -> list[str]:
    """Make trl 0.x import paths work on the installed trl. Idempotent.

    Args:
        force: replace names trl still defines (default: leave them alone).

    Returns:
        The dotted names that were added (empty when nothing was missing).

    Raises:
        ModuleNotFoundError: trl is not installed (``pip install trl``).

    Example:
        >>> added = patch_trl()  # doctest: +SKIP
        >>> from trl import DataCollatorForCompletionOnlyLM  # doctest: +SKIP
    """
    try:
        importlib.import_module("trl")
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("patch_trl() needs trl: pip install trl") from err
    added: list[str] = []
    for (module_name, name), (source, source_name) in LEGACY_NAMES.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue  # that module is gone too; the top-level name still works
        if force or not _has(module, name):
            setattr(module, name, getattr(importlib.import_module(source), source_name))
            added.append(f"{module_name}.{name}")
    added += _patch_dataset_formatting(force)
    return added


def _has(module: Any, name: str) -> bool:
    try:
        getattr(module, name)
    except (AttributeError, ImportError, RuntimeError):  # trl's lazy modules raise on removed names
        return False
    return True


def _patch_dataset_formatting(force: bool) -> list[str]:
    try:
        existing = importlib.import_module(_DATASET_FORMATTING)
    except ImportError:
        existing = None
    if existing is not None and not force:
        return []
    from .formats import dataset_formatting as ours

    module = types.ModuleType(_DATASET_FORMATTING, doc=f"Restored by trl_formatkit.legacy.patch_trl().\n\n{ours.__doc__}")
    for name in _DATASET_FORMATTING_NAMES[1:]:
        setattr(module, name, getattr(ours, name))
    module.__all__ = list(_DATASET_FORMATTING_NAMES)

    def __getattr__(name: str) -> Any:  # FORMAT_MAPPING stays lazy (it imports datasets)
        if name == "FORMAT_MAPPING":
            return ours.FORMAT_MAPPING
        raise AttributeError(f"module {_DATASET_FORMATTING!r} has no attribute {name!r}")

    module.__getattr__ = __getattr__
    sys.modules[_DATASET_FORMATTING] = module
    extras = importlib.import_module("trl.extras")
    extras.dataset_formatting = module
    return [_DATASET_FORMATTING]
