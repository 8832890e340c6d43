"""The built-in formats, registered through the same plugin hook as third-party ones.

=============  ========================================  ==============================================
name           columns                                   aliases
=============  ========================================  ==============================================
chatml         ``messages``                              ``messages``, ``conversational``, ``openai``
instruction    ``prompt``, ``completion``                ``prompt-completion``
alpaca         ``instruction``, ``input``, ``output``
sharegpt       ``conversations``                         ``conversations``
text           ``text`` (already formatted)              ``formatted``
=============  ========================================  ==============================================

Imports neither ``datasets`` nor ``trl``.

Example:
    >>> alpaca_to_messages({"instruction": "Translate to French.", "input": "Good morning", "output": "Bonjour"})
    [{'role': 'user', 'content': 'Translate to French.\\n\\nGood morning'}, {'role': 'assistant', 'content': 'Bonjour'}]
    >>> sharegpt_to_messages({"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]})
    [{'role': 'user', 'content': 'Hi'}, {'role': 'assistant', 'content': 'Hello!'}]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import FormatKitTypeError, FormatKitValueError, preview
from ..hookspecs import hookimpl
from ..structure import message_dicts
from .core import Format

__all__ = [
    "SHAREGPT_ROLES",
    "chatml_to_messages",
    "instruction_to_messages",
    "alpaca_to_messages",
    "sharegpt_to_messages",
    "text_to_messages",
    "CHATML",
    "INSTRUCTION",
    "ALPACA",
    "SHAREGPT",
    "TEXT",
    "BUILTIN_FORMATS",
    "formatkit_register_formats",
]

#: ShareGPT speaker names (``from``) -> chat roles. Unknown speakers are an error that lists these.
SHAREGPT_ROLES: Mapping[str, str] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
    "tool": "tool",
    "observation": "tool",
    "function_response": "tool",
    "function_call": "assistant",
}


def _turns_to_messages(turns: Any, column: str, roles: Mapping[str, str] = SHAREGPT_ROLES) -> list[dict]:
    """Turns as ``{"role", "content"}`` (kept as they are) or ShareGPT ``{"from", "value"}`` (mapped) -> messages."""
    messages = []
    for i, turn in enumerate(message_dicts(turns, f"column {column!r}")):
        if turn.get("role") is not None:
            messages.append(dict(turn))
        elif turn.get("from") is not None:
            speaker = turn["from"]
            role = roles.get(speaker) if isinstance(speaker, str) else None
            if role is None:
                role = roles.get(speaker.strip().lower()) if isinstance(speaker, str) else None
            if role is None:
                raise FormatKitValueError(
                    f"column {column!r}, message {i}: unknown ShareGPT speaker {speaker!r}; known: "
                    f"{', '.join(f'{k} -> {v}' for k, v in roles.items())}. For other speakers, register a format "
                    "whose to_messages is functools.partial(sharegpt_to_messages, roles={...})"
                )
            messages.append({"role": role, "content": turn.get("value")})
        else:
            raise FormatKitValueError(
                f"column {column!r}, message {i} has neither 'role'/'content' nor 'from'/'value' keys: "
                f"{preview(turn)}"
            )
    return messages


def _require_str(row: Mapping[str, Any], column: str, fmt: str) -> str:
    value = row[column]
    if not isinstance(value, str):
        raise FormatKitTypeError(
            f"{fmt} format: column {column!r} must be a string, got {type(value).__name__}: {preview(value)}"
        )
    return value


def chatml_to_messages(row: Mapping[str, Any]) -> list[dict]:
    """OpenAI-style ``messages`` (a list of ``{"role", "content"}``) -> the same messages.

    ShareGPT-style ``{"from", "value"}`` turns in a ``messages`` column are mapped too.

    Example:
        >>> chatml_to_messages({"messages": [{"role": "user", "content": "Hi"}]})
        [{'role': 'user', 'content': 'Hi'}]
    """
    return _turns_to_messages(row["messages"], "messages")


def instruction_to_messages(row: Mapping[str, Any]) -> list[dict]:
    """``prompt``/``completion`` -> a user turn and an assistant turn (trl 0.x's instruction format).

    Either may also be conversational already (a list of messages, trl's conversational prompt-completion); the
    lists are concatenated.

    Example:
        >>> instruction_to_messages({"prompt": "What is the capital of Argentina?", "completion": "Buenos Aires."})
        [{'role': 'user', 'content': 'What is the capital of Argentina?'}, {'role': 'assistant', 'content': 'Buenos Aires.'}]
        >>> instruction_to_messages({"prompt": [{"role": "system", "content": "Be brief."},
        ...                                     {"role": "user", "content": "Hi"}],
        ...                          "completion": [{"role": "assistant", "content": "Hello"}]})[0]
        {'role': 'system', 'content': 'Be brief.'}
    """
    prompt, completion = row["prompt"], row["completion"]
    if isinstance(prompt, str):
        messages = [{"role": "user", "content": prompt}]
    else:
        messages = _turns_to_messages(prompt, "prompt")
    if isinstance(completion, str):
        messages.append({"role": "assistant", "content": completion})
    else:
        messages.extend(_turns_to_messages(completion, "completion"))
    return messages


def alpaca_to_messages(row: Mapping[str, Any]) -> list[dict]:
    """Alpaca ``instruction``/``input``/``output`` -> user (instruction, a blank line, input) and assistant turns.

    An empty or missing ``input`` leaves the instruction alone.

    Example:
        >>> alpaca_to_messages({"instruction": "Name a colour.", "input": "", "output": "Blue."})
        [{'role': 'user', 'content': 'Name a colour.'}, {'role': 'assistant', 'content': 'Blue.'}]
    """
    instruction = _require_str(row, "instruction", "alpaca")
    extra = row.get("input")
    if extra is not None and not isinstance(extra, str):
        raise FormatKitTypeError(f"alpaca format: column 'input' must be a string, got {preview(extra)}")
    user = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": _require_str(row, "output", "alpaca")}]


def sharegpt_to_messages(row: Mapping[str, Any], roles: Mapping[str, str] = SHAREGPT_ROLES) -> list[dict]:
    """ShareGPT ``conversations`` (``{"from", "value"}`` turns) -> messages, speakers mapped by ``roles``.

    ``human`` -> user, ``gpt`` -> assistant, ``system`` -> system, ``tool`` -> tool (see :data:`SHAREGPT_ROLES`).
    Turns that already use ``role``/``content`` (trl 0.x's ``conversations`` column) are kept as they are.

    Example:
        >>> sharegpt_to_messages({"conversations": [{"from": "system", "value": "Be brief."},
        ...                                         {"from": "human", "value": "Hi"}]})
        [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'}]
    """
    return _turns_to_messages(row["conversations"], "conversations", roles)


def text_to_messages(row: Mapping[str, Any]) -> list[dict]:
    """Already formatted ``text`` has no messages to recover: always raises, with what to do instead.

    Raises:
        FormatKitValueError: always.
    """
    raise FormatKitValueError(
        "the 'text' format holds already formatted text, which cannot be turned back into messages. Train on it "
        "as it is (SFTConfig(dataset_text_field='text')) and check it with "
        "trl_formatkit.check_formatted_text(texts, tokenizer) (template markers, EOS); or convert the raw "
        "columns it was made from with to_messages(dataset, format=...)"
    )


CHATML = Format(
    "chatml",
    {"messages"},
    chatml_to_messages,
    "OpenAI-style conversations: messages = [{role, content}, ...] (trl's conversational format)",
    aliases=("messages", "conversational", "openai"),
)
INSTRUCTION = Format(
    "instruction",
    {"prompt", "completion"},
    instruction_to_messages,
    "prompt / completion, strings or conversational (trl's prompt-completion format)",
    aliases=("prompt-completion",),
)
ALPACA = Format(
    "alpaca",
    {"instruction", "input", "output"},
    alpaca_to_messages,
    "Stanford Alpaca: instruction / input / output; the input is joined into the user turn",
)
SHAREGPT = Format(
    "sharegpt",
    {"conversations"},
    sharegpt_to_messages,
    "ShareGPT: conversations = [{from, value}, ...]; human/gpt/system/tool -> user/assistant/system/tool",
    aliases=("conversations",),
)
TEXT = Format(
    "text",
    {"text"},
    text_to_messages,
    "already formatted text (train with dataset_text_field='text'); detected only when nothing else matches",
    aliases=("formatted",),
    priority=-1,
)

BUILTIN_FORMATS: tuple[Format, ...] = (CHATML, INSTRUCTION, ALPACA, SHAREGPT, TEXT)


@hookimpl
def formatkit_register_formats(register):
    """Register the built-in formats (this module is the plugin ``builtin``)."""
    for fmt in BUILTIN_FORMATS:
        register(fmt)
