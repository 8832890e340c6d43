"""What a tokenizer's chat template really writes: rendered once on a sample conversation and read back.

The one home for probing a chat template: the facts the audit checks (end-of-turn token, ``{% generation %}``
coverage, double BOS), the markers :func:`template_markers` reports (used by
:func:`~trl_formatkit.formats.check_formatted_text`), and :func:`starts_with_double_bos`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import FormatKitTypeError
from .vocab import special_ids, template_source

__all__ = ["template_markers", "starts_with_double_bos"]

# A short conversation every check renders: two exchanges, so a template that ends only the last turn shows.
SAMPLE_CONVERSATION = (
    {"role": "user", "content": "What is the capital of Argentina?"},
    {"role": "assistant", "content": "Buenos Aires."},
    {"role": "user", "content": "And of Chile?"},
    {"role": "assistant", "content": "Santiago."},
)
GENERATION_TAG_RE = re.compile(r"{%-?\s*generation\s*-?%}")
_PROBE_USER = "FORMATKITUSERPROBE"
_PROBE_ASSISTANT = "FORMATKITASSISTANTPROBE"


def render(
    tokenizer: Any,
    messages: Sequence[Mapping[str, str]],
    *,
    template: str | None = None,
    add_generation_prompt: bool = False,
) -> str:
    """``apply_chat_template(..., tokenize=False)``, checked to return text."""
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
    if template is not None:
        kwargs["chat_template"] = template
    text = tokenizer.apply_chat_template([dict(m) for m in messages], **kwargs)
    if not isinstance(text, str):
        raise FormatKitTypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not str")
    return text


def encode(tokenizer: Any, text: str, *, add_special_tokens: bool = False) -> list[int]:
    """The token ids of ``text`` (without the tokenizer's own BOS/EOS unless asked)."""
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def starts_with_double_bos(tokenizer: Any, text: str) -> bool:
    """Whether tokenizing ``text`` the plain way (``tokenizer(text)``) gives two BOS tokens in front.

    True where the text already starts with BOS (a chat template that writes ``{{ bos_token }}``) and the
    tokenizer adds another (Llama's post-processor).

    Example:
        >>> from trl_formatkit._toy import toy_tokenizer
        >>> starts_with_double_bos(toy_tokenizer(add_bos=True), "<s> hello"), starts_with_double_bos(
        ...     toy_tokenizer(), "<s> hello")
        (True, False)
    """
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos_id is None:
        return False
    return encode(tokenizer, text, add_special_tokens=True)[:2] == [bos_id, bos_id]


@dataclass
class TemplateFacts:
    """What rendering :data:`SAMPLE_CONVERSATION` showed about a chat template."""

    error: str | None = None
    end_of_turn_id: int | None = None
    tail_ids: list[int] = field(default_factory=list)
    mid_turn_has_end: bool | None = None
    has_generation_markers: bool = False
    end_of_turn_in_generation: bool | None = None
    generation_marks_nothing: bool = False
    double_bos: bool = False
    located: bool = True


def analyse_template(tokenizer: Any) -> TemplateFacts | None:
    """Render the sample conversation and look at what follows the assistant's last word (None: no template)."""
    template = template_source(tokenizer)
    if not template:
        return None
    facts = TemplateFacts(has_generation_markers=bool(GENERATION_TAG_RE.search(template)))
    try:
        text = render(tokenizer, SAMPLE_CONVERSATION)
    except Exception as error:  # any Jinja or template error: the audit reports it
        facts.error = f"{type(error).__name__}: {error}"
        return facts
    last = SAMPLE_CONVERSATION[-1]["content"]
    end = text.rfind(last)
    if end < 0:
        facts.located = False
        return facts
    facts.tail_ids = encode(tokenizer, text[end + len(last) :])
    specials = special_ids(tokenizer)
    facts.end_of_turn_id = next((i for i in facts.tail_ids if i in specials), None)
    first_end = text.find(SAMPLE_CONVERSATION[1]["content"])
    next_user = text.find(SAMPLE_CONVERSATION[2]["content"])
    if facts.end_of_turn_id is not None and 0 <= first_end < next_user:
        middle = text[first_end + len(SAMPLE_CONVERSATION[1]["content"]) : next_user]
        facts.mid_turn_has_end = facts.end_of_turn_id in encode(tokenizer, middle)
    facts.double_bos = starts_with_double_bos(tokenizer, text)
    if facts.has_generation_markers and facts.end_of_turn_id is not None:
        _read_generation_block(tokenizer, facts)
    return facts


def _read_generation_block(tokenizer: Any, facts: TemplateFacts) -> None:
    """Whether the last ``{% generation %}`` span covers the end-of-turn token (unknown on slow tokenizers)."""
    try:
        out = tokenizer.apply_chat_template(
            [dict(m) for m in SAMPLE_CONVERSATION], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
        )
        ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    except Exception:  # noqa: BLE001 - slow tokenizers cannot build assistant masks: the answer stays unknown (None)
        return
    trained = [i for i, m in enumerate(mask) if m]
    if not trained:
        facts.generation_marks_nothing = True
        facts.end_of_turn_in_generation = False
        return
    stop = start = trained[-1]
    while start > 0 and mask[start - 1]:
        start -= 1
    facts.end_of_turn_in_generation = facts.end_of_turn_id in ids[start : stop + 1]


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The token that ends an assistant turn in the chat template, or None (no template, or it fails)."""
    facts = analyse_template(tokenizer)
    return None if facts is None or facts.error else facts.end_of_turn_id


def template_markers(tokenizer: Any) -> tuple[str, ...]:
    """The markers a tokenizer's chat template writes around a user and an assistant turn.

    The special (added) tokens that appear in a rendered turn pair, such as ``<|user|>``, ``<|end|>``,
    ``<|assistant|>`` for Phi-3 or ``<|im_start|>``, ``<|im_end|>`` for ChatML; BOS, EOS, PAD and UNK are left out
    (EOS is checked on its own). For a template made of plain text, the lines around the turns (``### User:``).
    Empty when the tokenizer has no chat template, or one that cannot render a lone user/assistant pair.

    Example:
        >>> from trl_formatkit.formats._demo import phi3_like_tokenizer
        >>> template_markers(phi3_like_tokenizer())
        ('<|user|>', '<|end|>', '<|assistant|>')
    """
    if not getattr(tokenizer, "chat_template", None):
        return ()
    probe = ({"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_ASSISTANT})
    try:
        rendered = render(tokenizer, probe)
    except Exception:  # noqa: BLE001 - a template that needs more (a system turn, tools) has no probe-able markers
        return ()
    if _PROBE_USER not in rendered or _PROBE_ASSISTANT not in rendered:
        return ()
    skip = {getattr(tokenizer, attr, None) for attr in ("bos_token", "eos_token", "pad_token", "unk_token")} - {None}
    candidates = set(getattr(tokenizer, "get_added_vocab", dict)()) | set(getattr(tokenizer, "all_special_tokens", []))
    found = sorted(
        (rendered.index(token), token) for token in candidates if token and token not in skip and token in rendered
    )
    if found:
        return tuple(dict.fromkeys(token for _, token in found))
    start_user, start_assistant = rendered.index(_PROBE_USER), rendered.index(_PROBE_ASSISTANT)
    prefix = rendered[:start_user]
    between = rendered[start_user + len(_PROBE_USER) : start_assistant]
    for token in skip:
        prefix, between = prefix.replace(token, ""), between.replace(token, "")
    lines = [line.strip() for line in prefix.splitlines() if line.strip()][-1:]
    lines += [line.strip() for line in between.splitlines() if line.strip()]
    return tuple(dict.fromkeys(lines))


def bos_writers(tokenizer: Any) -> list[str]:
    """What puts the BOS token into training text: the chat template, the tokenizer's post-processor, both, or
    nothing (GPT-2 and Qwen2 never write their BOS, so a BOS equal to EOS does no harm there).

    Example:
        >>> from trl_formatkit._toy import toy_tokenizer
        >>> bos_writers(toy_tokenizer()), bos_writers(toy_tokenizer(add_bos=True))
        ([], ["the tokenizer's post-processor"])
    """
    bos, bos_id = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "bos_token_id", None)
    if bos is None or bos_id is None:
        return []
    writers = []
    source = template_source(tokenizer)
    if source and "bos_token" in source:
        writers.append("the chat template")
    elif source:
        try:
            if render(tokenizer, SAMPLE_CONVERSATION[:2]).startswith(str(bos)):
                writers.append("the chat template")
        except Exception:  # noqa: BLE001 - a template that does not render writes nothing; the audit reports it
            pass
    if bos_id in encode(tokenizer, "", add_special_tokens=True)[:1]:
        writers.append("the tokenizer's post-processor")
    return writers
