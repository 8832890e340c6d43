"""trl's removed ``trl.extras.dataset_formatting``, restored with trl 0.19's behaviour.

``FORMAT_MAPPING`` holds ``datasets`` feature objects equal to what today's ``datasets`` infers for a
conversational ``messages`` column and an instruction (``prompt``/``completion``) dataset, so the book's checks
``FORMAT_MAPPING['chatml'] == conversation_ds.features['messages']`` and
``FORMAT_MAPPING['instruction'] == instruction_ds.features`` print ``True``. It is built on first access (module
``__getattr__``), so importing this module does not import ``datasets``.

Example:
    >>> from trl_formatkit.formats._demo import phi3_like_tokenizer
    >>> tokenizer = phi3_like_tokenizer()  # offline stand-in with Phi-3-mini's chat template and special tokens
    >>> formatting_func = instructions_formatting_function(tokenizer)
    >>> formatting_func({"prompt": "What is the capital of Argentina?", "completion": "Buenos Aires."})
    '<|user|>\\nWhat is the capital of Argentina?<|end|>\\n<|assistant|>\\nBuenos Aires.<|end|>\\n<|endoftext|>'
    >>> from trl_formatkit.formats.dataset_formatting import FORMAT_MAPPING  # built now, from `datasets`
    >>> FORMAT_MAPPING["instruction"]
    {'completion': Value('string'), 'prompt': Value('string')}
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

from ..errors import FormatKitValueError

__all__ = [
    "FORMAT_MAPPING",
    "conversations_formatting_function",
    "instructions_formatting_function",
    "get_formatting_func_from_dataset",
]

logger = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover - created on first access by __getattr__
    FORMAT_MAPPING: dict[str, Any]


def _build_format_mapping() -> dict[str, Any]:
    """trl 0.19's FORMAT_MAPPING, for the installed ``datasets`` (``List`` from 4.0 on, a list before)."""
    import datasets
    from datasets import Value

    string = Value(dtype="string")
    if int(datasets.__version__.split(".")[0]) >= 4:
        from datasets import List

        chatml: Any = List({"content": string, "role": string})
    else:  # datasets 3.x: a list of one struct is a sequence of structs
        chatml = [{"content": string, "role": string}]
    return {"chatml": chatml, "instruction": {"completion": string, "prompt": string}}


def __getattr__(name: str) -> Any:
    if name == "FORMAT_MAPPING":
        value = _build_format_mapping()
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _non_empty(examples: Any, field: str) -> Any:
    value = examples[field]
    if isinstance(value, (list, tuple)) and len(value) == 0:
        raise FormatKitValueError(
            f"the {field!r} value is empty: an empty conversation (or an empty batch) cannot be formatted; "
            "filter such rows out first (dataset.filter(lambda row: len(row[...]) > 0))"
        )
    return value


def conversations_formatting_function(
    tokenizer: Any, messages_field: Literal["messages", "conversations"] = "messages", tools: list | None = None
) -> Callable[[Any], Any]:
    r"""A formatting function that applies the tokenizer's chat template to a messages column (trl 0.19).

    The returned ``format_dataset(examples)`` takes one row (returns a string) or a batch (returns a list of
    strings), as ``Dataset.map(batched=True)`` and trl's ``SFTTrainer(formatting_func=...)`` need.

    Args:
        tokenizer: A tokenizer with a chat template.
        messages_field: The column holding the messages (``"messages"`` or ``"conversations"``).
        tools: Tool (function) schemas passed to ``apply_chat_template(tools=...)``.

    Returns:
        ``format_dataset(examples)``.

    Example:
        >>> from trl_formatkit.formats._demo import phi3_like_tokenizer
        >>> formatting_func = conversations_formatting_function(phi3_like_tokenizer(), messages_field="messages")
        >>> print(formatting_func({"messages": [{"role": "user", "content": "Hi"},
        ...                                     {"role": "assistant", "content": "Hello!"}]}))
        <|user|>
        Hi<|end|>
        <|assistant|>
        Hello!<|end|>
        <|endoftext|>
    """

    def format_dataset(examples):
        value = _non_empty(examples, messages_field)
        if isinstance(value[0], list):
            output_texts = []
            for i in range(len(examples[messages_field])):
                output_texts.append(
                    tokenizer.apply_chat_template(examples[messages_field][i], tokenize=False, tools=tools)
                )
            return output_texts
        else:
            return tokenizer.apply_chat_template(examples[messages_field], tokenize=False, tools=tools)

    return format_dataset


def instructions_formatting_function(tokenizer: Any) -> Callable[[Any], Any]:
    r"""A formatting function for ``prompt``/``completion`` rows: a user turn and an assistant turn (trl 0.19).

    The returned ``format_dataset(examples)`` takes one row (returns a string) or a batch (returns a list of
    strings).

    Args:
        tokenizer: A tokenizer with a chat template.

    Returns:
        ``format_dataset(examples)``.

    Example:
        >>> from trl_formatkit.formats._demo import phi3_like_tokenizer
        >>> formatting_func = instructions_formatting_function(phi3_like_tokenizer())
        >>> formatting_func({"prompt": ["Hi", "Bye"], "completion": ["Hello!", "See you."]})[1]
        '<|user|>\nBye<|end|>\n<|assistant|>\nSee you.<|end|>\n<|endoftext|>'
    """

    def format_dataset(examples):
        if isinstance(examples["prompt"], list):
            output_texts = []
            for i in range(len(examples["prompt"])):
                converted_sample = [
                    {"role": "user", "content": examples["prompt"][i]},
                    {"role": "assistant", "content": examples["completion"][i]},
                ]
                output_texts.append(tokenizer.apply_chat_template(converted_sample, tokenize=False))
            return output_texts
        else:
            converted_sample = [
                {"role": "user", "content": examples["prompt"]},
                {"role": "assistant", "content": examples["completion"]},
            ]
            return tokenizer.apply_chat_template(converted_sample, tokenize=False)

    return format_dataset


def get_formatting_func_from_dataset(dataset: Any, tokenizer: Any, tools: list | None = None) -> Callable | None:
    """The formatting function for a dataset's structure, or None when it is not supported (trl 0.19).

    Supported, as in trl 0.19: a ``messages`` or ``conversations`` column of ChatML messages
    (``FORMAT_MAPPING['chatml']``), or a dataset whose features are exactly ``prompt``/``completion`` strings
    (``FORMAT_MAPPING['instruction']``; no extra column). Anything else, including a ``ConstantLengthDataset``,
    gives None. For more schemas and extra columns, see :func:`trl_formatkit.to_messages`.

    Args:
        dataset: A ``datasets.Dataset``.
        tokenizer: The tokenizer whose chat template the function applies.
        tools: Tool schemas for conversational datasets.

    Returns:
        A formatting function, or None.

    Example:
        >>> from datasets import Dataset
        >>> from trl_formatkit.formats._demo import phi3_like_tokenizer
        >>> tok = phi3_like_tokenizer()
        >>> get_formatting_func_from_dataset(Dataset.from_dict({"prompt": ["a"], "completion": ["b"]}), tok)
        <function instructions_formatting_function.<locals>.format_dataset at ...>
        >>> print(get_formatting_func_from_dataset(Dataset.from_dict({"question": ["a"]}), tok))
        None
    """
    import datasets

    if isinstance(dataset, datasets.Dataset):
        format_mapping = globals().get("FORMAT_MAPPING") or __getattr__("FORMAT_MAPPING")
        if "messages" in dataset.features:
            if dataset.features["messages"] == format_mapping["chatml"]:
                logger.info("Formatting dataset with chatml format")
                return conversations_formatting_function(tokenizer, "messages", tools)
        if "conversations" in dataset.features:
            if dataset.features["conversations"] == format_mapping["chatml"]:
                logger.info("Formatting dataset with chatml format")
                return conversations_formatting_function(tokenizer, "conversations", tools)
        elif dataset.features == format_mapping["instruction"]:
            logger.info("Formatting dataset with instruction format")
            return instructions_formatting_function(tokenizer)

    return None

