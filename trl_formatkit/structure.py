"""Masks from a conversation's structure: render with the tokenizer's own chat template, map each message to its
token span.

A template search over token ids cannot tell a marker the chat template wrote from the same marker typed inside a
message (phi-3 turns the text ``<|assistant|>`` in a user message into the special token). The ``messages``
structure knows where each turn is, so here every conversation is rendered once with
``apply_chat_template(tokenize=False)``, all rendered texts are tokenized in one batched fast-tokenizer call with
character offsets, and each trained message's characters are mapped to tokens with ``np.searchsorted``. Text
inside a message can never open or close a turn.

How a message is found in the rendered text. The conversation is also rendered with every ``content`` replaced
by a placeholder (cached per template and role sequence, so once for a dataset of similar chats): that gives the
text the template writes around each message. The real rendering is then walked in order: the text before
message ``i`` must be there, then message ``i``'s content, verbatim. Where a template changes a content (it
trims it, or drops earlier reasoning ``<think>...</think>`` from history like Qwen3 and DeepSeek-R1, so the
template is not prefix-preserving), the stripped content, then the answer after ``</think>`` (with the reasoning
before it when that is still rendered), is searched from there on. Nothing is found by diffing prefixes, so a
template that renders history differently still gets exact masks.

What is trained, at the edges (tested on the five real tokenizers):

- a trained message's content, and with ``train_end_of_turn=True`` (default) the end of its turn: the text the
  template writes after the content up to and including the first special (added) token, when the template
  writes that text also when the message is the last one (``<|end|>``, ``<|im_end|>``, ``<|eot_id|>``, the EOS
  of ChatML-from-BOS/EOS and zephyr templates). A template whose turns end without a special token (plain-text
  templates) trains the content only. Text a template writes between the content and that token (tool calls
  after the content, a space before ``</s>``) is trained with it. The EOS some templates add once after the
  last turn (phi-3's ``<|endoftext|>``) is not an end of turn and is not trained;
- a token that starts inside a trained span is trained; a token that starts before it is trained when it is a
  normal token that ends inside it (SentencePiece's ``"▁Paris"`` carries the header's space) and not when it
  is a special token (phi-3's ``<|assistant|>`` swallows the newline and spaces after it);
- a BOS the template writes, role headers and the generation prompt are never trained.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import FormatKitKeyError, FormatKitTypeError, FormatKitValueError, preview

__all__ = ["encode_conversation", "encode_conversations", "find_template_markers"]

# letters and digits only, so templates that trim, strip or split contents leave them whole; "X" ends the number
_PLACEHOLDER = "FORMATKITCONTENT{}X"
_REASONING_PLACEHOLDER = "FORMATKITREASONING{}X"
_THINK_OPEN, _THINK_CLOSE = "<think>", "</think>"
_REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")  # the names transformers passes templates
_SKELETON_CACHE: dict[tuple, _Skeleton] = {}
_SKELETON_CACHE_SIZE = 2048


@dataclass(frozen=True)
class _Options:
    train_roles: frozenset[str]
    train_end_of_turn: bool
    last_turn_only: bool
    tools: Any
    template_kwargs: Mapping[str, Any]


@dataclass(frozen=True)
class _Skeleton:
    """What a template writes around the messages of one role sequence.

    ``before[i]``: the text between message ``i - 1``'s content (or the start; or message ``i``'s reasoning
    where that is written) and message ``i``'s content; ``None`` where the template does not render message
    ``i``. ``reasoning_before[i]``: the text before message ``i``'s reasoning field (``reasoning_content``),
    ``None`` where it is not written. ``tail``: the text after the last rendered content. ``end_of_turn[i]``:
    the text after message ``i``'s content that ends its turn and the special token it ends with
    (``("", "")``: none).
    """

    before: tuple[str | None, ...]
    reasoning_before: tuple[str | None, ...]
    tail: str
    end_of_turn: tuple[tuple[str, str], ...]


def _shape(message: Mapping[str, Any]) -> str:
    """What the skeleton of a message depends on: every field but the texts that become placeholders."""
    return repr({k: (1 if k in _REASONING_KEYS else v) for k, v in message.items() if k not in ("content", "train")})


def _reasoning_key(message: Mapping[str, Any]) -> str | None:
    return next((k for k in _REASONING_KEYS if isinstance(message.get(k), str)), None)


def _options(train_roles: Any, train_end_of_turn: bool, last_turn_only: bool, tools: Any, kwargs: Any) -> _Options:
    roles = (train_roles,) if isinstance(train_roles, str) else train_roles
    if roles is None or not all(isinstance(r, str) and r for r in roles):
        raise FormatKitTypeError(
            f"train_roles must be role names (strings), got {preview(train_roles)}; for example "
            "train_roles=('assistant',) or train_roles=('assistant', 'tool')"
        )
    return _Options(frozenset(roles), bool(train_end_of_turn), bool(last_turn_only), tools, dict(kwargs or {}))


def _check_tokenizer(tokenizer: Any) -> None:
    if not getattr(tokenizer, "chat_template", None):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise FormatKitValueError(
            f"tokenizer {name!r} has no chat template, so a conversation cannot be rendered; give it one with "
            "trl_formatkit.add_chat_template(tokenizer) or trl_formatkit.setup_chat_format(model, tokenizer)"
        )
    if not getattr(tokenizer, "is_fast", False):
        raise FormatKitTypeError(
            f"{type(tokenizer).__name__} is a slow tokenizer: masks from the structure need character offsets; "
            "load a fast one (AutoTokenizer.from_pretrained(..., use_fast=True))"
        )


def message_dicts(messages: Any, where: str) -> Sequence[Mapping[str, Any]]:
    """``messages`` checked to be a list of dicts; ``where`` ("row 3", "column 'conversations'") starts each error.

    Example:
        >>> message_dicts([{"role": "user", "content": "Hi"}], "row 0")
        [{'role': 'user', 'content': 'Hi'}]
        >>> message_dicts("Hi", "row 0")
        Traceback (most recent call last):
        ...
        trl_formatkit.errors.FormatKitTypeError: row 0: a conversation must be a list of messages ({'role': ..., 'content': ...}), got str: 'Hi'
    """
    if isinstance(messages, (str, bytes, Mapping)) or not isinstance(messages, Sequence):
        raise FormatKitTypeError(
            f"{where}: a conversation must be a list of messages ({{'role': ..., 'content': ...}}), got "
            f"{type(messages).__name__}: {preview(messages)}"
        )
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise FormatKitTypeError(
                f"{where}, message {i}: expected a dict with 'role' and 'content', got "
                f"{type(message).__name__}: {preview(message)}"
            )
    return messages


def _check_messages(messages: Any, row: int) -> list[dict[str, Any]]:
    """A checked copy of the conversation (each content a string or ``None``, rendered as the template does)."""
    message_dicts(messages, f"row {row}")
    if not messages:
        raise FormatKitValueError(f"row {row}: the conversation is empty; drop the row or give it messages")
    out = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if not isinstance(role, str) or not role:
            raise FormatKitValueError(
                f"row {row}, message {i}: 'role' must be a non-empty string such as 'user' or 'assistant', got "
                f"{preview(role)} in {preview(dict(message))}"
            )
        if content is not None and not isinstance(content, str):
            raise FormatKitTypeError(
                f"row {row}, message {i} ({role}): 'content' must be a string, got {type(content).__name__}: "
                f"{preview(content)}; join multimodal parts into text first"
            )
        train = message.get("train")
        if train is not None and not isinstance(train, bool):
            raise FormatKitTypeError(
                f"row {row}, message {i} ({role}): 'train' must be True, False or absent, got {preview(train)}"
            )
        out.append(dict(message))
    return out


def _trained(messages: list[dict[str, Any]], options: _Options) -> list[bool]:
    """Which messages are trained: the ``train`` key, else the role rule; ``last_turn_only`` keeps the last."""
    flags = [m["train"] if m.get("train") is not None else m["role"] in options.train_roles for m in messages]
    if options.last_turn_only and any(flags):
        last = len(flags) - 1 - flags[::-1].index(True)
        flags = [i == last for i in range(len(flags))]
    return flags


# -- rendering and the skeleton ---------------------------------------------------------------------------------
def _render(tokenizer: Any, messages: list[dict[str, Any]], options: _Options, row: int | None = None) -> str:
    clean = [{k: v for k, v in m.items() if k != "train"} for m in messages]
    try:
        text = tokenizer.apply_chat_template(clean, tools=options.tools, tokenize=False, **options.template_kwargs)
    except Exception as error:  # noqa: BLE001 - any Jinja/template error: name the row and the roles
        where = f"row {row}: " if row is not None else ""
        roles = [m["role"] for m in messages]
        raise FormatKitValueError(
            f"{where}the chat template cannot render this conversation (roles {roles}): "
            f"{type(error).__name__}: {error}. Fix the roles (most templates want user/assistant turns, some "
            "alternating, some a system turn first only) or the template"
        ) from error
    if not isinstance(text, str):
        raise FormatKitTypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not str")
    return text


def _render_batch(tokenizer: Any, batch: list[list[dict[str, Any]]], options: _Options) -> list[str]:
    """All conversations rendered in one ``apply_chat_template`` call; on an error, row by row to name the row."""
    clean = [[{k: v for k, v in m.items() if k != "train"} for m in messages] for messages in batch]
    try:
        texts = tokenizer.apply_chat_template(clean, tools=options.tools, tokenize=False, **options.template_kwargs)
    except Exception:  # noqa: BLE001 - find the row and say what is wrong with it
        texts = None
    if not isinstance(texts, list) or len(texts) != len(batch) or not all(isinstance(t, str) for t in texts):
        texts = [_render(tokenizer, messages, options, row) for row, messages in enumerate(batch)]
    return texts


def _tokenize(tokenizer: Any, texts: list[str]) -> tuple[list[list[int]], list[list[tuple[int, int]]]]:
    """Ids and character offsets of the rendered texts, as ``tokenizer(text, add_special_tokens=False)`` gives
    them: through the Rust backend in one batched call (the Python wrapper's conversion costs a sixth of the
    time), checked on the first text against the wrapper, which is used instead where they differ."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        encodings = backend.encode_batch(texts, add_special_tokens=False)
        if encodings[0].ids == list(tokenizer(texts[0], add_special_tokens=False)["input_ids"]):
            return [e.ids for e in encodings], [e.offsets for e in encodings]
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True, return_attention_mask=False)
    return [list(row) for row in encoded["input_ids"]], encoded["offset_mapping"]


def _special_tokens(tokenizer: Any) -> tuple[list[str], list[int]]:
    """The special tokens (strings, ids): the tokenizer's named specials and added tokens marked special."""
    tokens = {t: i for i, t in zip(tokenizer.all_special_ids, tokenizer.all_special_tokens)}
    for i, added in getattr(tokenizer, "added_tokens_decoder", {}).items():
        if getattr(added, "special", False):
            tokens[str(added)] = i
    tokens.pop("", None)
    return sorted(tokens, key=len, reverse=True), sorted(set(tokens.values()))


def _first_special(tokenizer: Any, text: str) -> re.Match[str] | None:
    strings, _ = _special_tokens(tokenizer)
    if not strings:
        return None
    match = re.search("|".join(map(re.escape, strings)), text)
    bos, eos = getattr(tokenizer, "bos_token", None), getattr(tokenizer, "eos_token", None)
    if match is None or (match.group() == bos and bos != eos):  # a BOS opens the next turn; it ends nothing
        return None
    return match


def _after(text: str, placeholder: str) -> str | None:
    at = text.find(placeholder)
    return None if at < 0 else text[at + len(placeholder) :]


def _end_of_turn(
    tokenizer: Any, probe: list[dict[str, Any]], i: int, after: str, options: _Options
) -> tuple[str, str]:
    """The text ending message ``i``'s turn (what follows it both here and when it is the last message, up to and
    including the first special token) and that special token; ``("", "")`` where there is none."""
    alone = after
    if i < len(probe) - 1:
        try:
            alone = _after(_render(tokenizer, probe[: i + 1], options), _PLACEHOLDER.format(i)) or ""
        except FormatKitValueError:  # a template that cannot render this prefix: trust the text that follows
            alone = after
    n = 0
    for x, y in zip(after, alone):
        if x != y:
            break
        n += 1
    match = _first_special(tokenizer, after[:n])
    return (after[: match.end()], match.group()) if match else ("", "")


def _skeleton(tokenizer: Any, messages: list[dict[str, Any]], options: _Options) -> _Skeleton:
    """The text the template writes around the messages, from a rendering with placeholder contents (cached)."""
    key = (
        id(tokenizer),
        str(tokenizer.chat_template),
        tokenizer.bos_token,
        tokenizer.eos_token,
        repr(options.tools),
        repr(sorted(options.template_kwargs.items())),
        tuple(map(_shape, messages)),
    )
    found = _SKELETON_CACHE.get(key)
    if found is not None:
        return found
    probe = []
    for i, m in enumerate(messages):
        probe.append({**m, "content": _PLACEHOLDER.format(i)})
        if (field := _reasoning_key(m)) is not None:
            probe[-1][field] = _REASONING_PLACEHOLDER.format(i)
    text = _render(tokenizer, probe, options)
    before: list[str | None] = []
    reasoning_before: list[str | None] = [None] * len(probe)
    cursor, rendered = 0, []  # (message index, content start, content end) in the placeholder rendering
    for i in range(len(probe)):
        at = text.find(_PLACEHOLDER.format(i), cursor)
        if at < 0:  # the template does not write this message's content
            before.append(None)
            continue
        reasoning_at = text.find(_REASONING_PLACEHOLDER.format(i), cursor, at)
        if reasoning_at >= 0:
            reasoning_before[i] = text[cursor:reasoning_at]
            cursor = reasoning_at + len(_REASONING_PLACEHOLDER.format(i))
        before.append(text[cursor:at])
        cursor = at + len(_PLACEHOLDER.format(i))
        rendered.append((i, at, cursor))
    ends = [("", "")] * len(probe)
    for k, (i, _, end) in enumerate(rendered):
        stop = rendered[k + 1][1] if k + 1 < len(rendered) else len(text)
        ends[i] = _end_of_turn(tokenizer, probe, i, text[end:stop], options)
    skeleton = _Skeleton(tuple(before), tuple(reasoning_before), text[cursor:], tuple(ends))
    if len(_SKELETON_CACHE) >= _SKELETON_CACHE_SIZE:
        _SKELETON_CACHE.clear()
    _SKELETON_CACHE[key] = skeleton
    return skeleton


# -- locating contents in the real rendering ---------------------------------------------------------------------
def _search(text: str, content: str, start: int) -> tuple[int, int] | None:
    """Where a content the template changed is in ``text`` (from ``start``): stripped, or its answer after
    ``</think>`` with the reasoning before it when the template still writes it."""
    for candidate in dict.fromkeys((content, content.strip())):
        at = text.find(candidate, start) if candidate else -1
        if at >= 0:
            return at, at + len(candidate)
    if _THINK_CLOSE not in content:
        return None
    reasoning, _, answer = content.rpartition(_THINK_CLOSE)
    reasoning, answer = reasoning.split(_THINK_OPEN)[-1].strip(), answer.strip()
    at = text.find(answer, start) if answer else -1
    if at < 0:
        return None
    first = text.find(reasoning, start, at) if reasoning else -1
    if first >= 0:  # the reasoning is rendered (the last turn): train it from its <think>
        opening = text.rfind(_THINK_OPEN, start, first)
        first = opening if opening >= 0 else first
    return (first if first >= 0 else at), at + len(answer)


def _end_span(text: str, cursor: int, end: str, marker: str) -> int:
    """Where the end of turn that follows a content at ``cursor`` stops: after the text the template writes
    there, or, where that depends on the content (a tool call written after an empty content), after the first
    end marker from there on."""
    if not end or text.startswith(end, cursor):
        return cursor + len(end)
    at = text.find(marker, cursor)
    return cursor if at < 0 else at + len(marker)


def _locate_reasoning(text: str, message: Mapping[str, Any], before: str, cursor: int) -> tuple[int | None, int]:
    """Where a message's reasoning field (``reasoning_content``) is rendered: its start (from the ``<think>``
    that opens it, when there is one) and end; ``(None, cursor)`` where it cannot be found."""
    key = _reasoning_key(message)
    header_ok = text.startswith(before, cursor)
    found = _search(text, message[key], cursor + len(before) if header_ok else cursor) if key else None
    if found is None:
        return None, cursor
    opening = text.rfind(_THINK_OPEN, cursor, found[0])
    return (opening if opening >= 0 else found[0]), found[1]


def _locate(
    text: str, messages: list[dict[str, Any]], skeleton: _Skeleton, trained: list[bool], row: int, options: _Options
) -> list[tuple[int, int, int]]:
    """``(start, content end, trained end)`` character spans of the trained messages in ``text``."""
    spans: list[tuple[int, int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        before, content = skeleton.before[i], message.get("content") or ""
        if before is None:
            if trained[i]:
                raise FormatKitValueError(
                    f"row {row}, message {i} ({message['role']}): the chat template does not write this message "
                    f"({preview(content)}), so it cannot be trained; mark it 'train': False, or use a template "
                    "that renders this role"
                )
            continue
        reasoning_start = None
        if skeleton.reasoning_before[i] is not None:
            reasoning_start, cursor = _locate_reasoning(text, message, skeleton.reasoning_before[i], cursor)
        header_ok = text.startswith(before, cursor)
        expected = cursor + len(before)
        if header_ok and text.startswith(content, expected):
            found: tuple[int, int] | None = (expected, expected + len(content))
        else:
            found = _search(text, content, expected if header_ok else cursor)
        if found is None:
            if not trained[i]:
                continue  # a prompt the template rewrites: nothing to train in it, keep walking
            raise FormatKitValueError(
                f"row {row}, message {i} ({message['role']}): its content {preview(content)} is not in the text "
                f"the chat template renders after position {cursor}: {preview(text[cursor:], 200)}. The template "
                "changes message contents in a way that cannot be followed; mark the message 'train': False, or "
                "write its content as the template renders it"
            )
        start, cursor = found
        if trained[i]:
            start = start if reasoning_start is None else reasoning_start
            end = _end_span(text, cursor, *skeleton.end_of_turn[i]) if options.train_end_of_turn else cursor
            spans.append((start, cursor, end))
    return spans


# -- characters to tokens -----------------------------------------------------------------------------------------
def _masks_from_spans(
    ids: list[list[int]],
    offsets: list[list[tuple[int, int]]],
    texts: list[str],
    spans: list[list[tuple[int, int, int]]],
    special_ids: list[int],
) -> list[list[int]]:
    """Per-row 0/1 masks of the tokens the character spans cover, for the whole batch at once (numpy)."""
    lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
    n = int(lengths.sum())
    flat_ids = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=n)
    pairs = itertools.chain.from_iterable(itertools.chain.from_iterable(offsets))
    flat = np.fromiter(pairs, dtype=np.int64, count=2 * n)
    char_base = np.concatenate(([0], np.cumsum([len(t) + 1 for t in texts])))  # +1: rows never touch
    base = np.repeat(char_base[:-1], lengths)
    starts = np.maximum.accumulate(flat[0::2] + base) if n else flat[0::2]
    ends = np.maximum.accumulate(flat[1::2] + base) if n else flat[1::2]
    special = np.isin(flat_ids, special_ids)
    span_rows = np.fromiter((r for r, row in enumerate(spans) for _ in row), dtype=np.int64)
    triples = np.array([s for row in spans for s in row], dtype=np.int64).reshape(-1, 3)
    triples += char_base[span_rows, None]
    a, b_content, b = triples[:, 0], triples[:, 1], triples[:, 2]
    first = np.searchsorted(ends, a, side="right")
    inside = np.minimum(first, max(n - 1, 0))
    # a special token that starts before the span swallowed whitespace after a header: it is the header's
    first = first + ((first < n) & (starts[inside] < a) & special[inside])
    last = np.searchsorted(starts, b, side="left")
    before = np.maximum(last - 1, 0)
    # the span ends at the content (no end of turn trained): a special token straddling its end is the marker
    last = last - ((b == b_content) & (last > first) & special[before] & (starts[before] < b) & (ends[before] > b))
    keep = last > first
    diff = np.zeros(n + 1, dtype=np.int64)
    np.add.at(diff, first[keep], 1)
    np.add.at(diff, last[keep], -1)
    mask = (np.cumsum(diff[:n]) > 0).astype(np.int8)
    return [part.tolist() for part in np.split(mask, np.cumsum(lengths)[:-1])]


# -- public ---------------------------------------------------------------------------------------------------------
def encode_conversations(
    tokenizer: Any,
    conversations: Sequence[Sequence[Mapping[str, Any]]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    train_roles: Sequence[str] | str = ("assistant",),
    train_end_of_turn: bool = True,
    last_turn_only: bool = False,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, list[list[int]]]:
    """Token ids and completion masks of a batch of conversations, from their structure.

    Each conversation is rendered once with the tokenizer's own chat template; the texts are tokenized in one
    batched call, and each trained message (its content, and the end of its turn) is mapped to its tokens (see
    the module docstring for the edges). The ids equal ``apply_chat_template(messages, tokenize=True)``. For
    ``datasets.Dataset.map(batched=True)``: ``lambda batch: encode_conversations(tok, batch["messages"])``.

    Args:
        tokenizer: a fast tokenizer with a chat template (``add_chat_template`` gives one).
        conversations: lists of messages ``{"role": ..., "content": ...}``; a message's ``"train": True/False``
            overrides the role rule.
        tools: tool schemas passed to the template (the same for every row).
        train_roles: roles whose messages are trained.
        train_end_of_turn: also train the marker that ends a trained turn (``<|end|>``, ``<|im_end|>``, EOS).
        last_turn_only: train only the last message that would be trained.
        chat_template_kwargs: extra variables for the template (``{"enable_thinking": False}``).

    Returns:
        ``{"input_ids": [[...], ...], "completion_mask": [[...], ...]}``, ``completion_mask[r][i] == 1`` where
        token ``i`` of row ``r`` is trained.

    Raises:
        FormatKitValueError: no chat template, a template that cannot render a row, a trained message that
            cannot be located (each names the row, the message and the fix).
        FormatKitTypeError: a malformed conversation or option, or a slow tokenizer.

    Example:
        >>> from trl_formatkit._toy import toy_tokenizer
        >>> from trl_formatkit import add_chat_template
        >>> tok = add_chat_template(toy_tokenizer())
        >>> chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
        >>> out = encode_conversations(tok, [chat])
        >>> [tok.decode(i) for i, m in zip(out["input_ids"][0], out["completion_mask"][0]) if m]
        ['hello', '</s>']
    """
    _check_tokenizer(tokenizer)
    options = _options(train_roles, train_end_of_turn, last_turn_only, tools, chat_template_kwargs)
    batch = [_check_messages(conversation, row) for row, conversation in enumerate(conversations)]
    if not batch:
        return {"input_ids": [], "completion_mask": []}
    texts = _render_batch(tokenizer, batch, options)
    spans = [
        _locate(text, messages, _skeleton(tokenizer, messages, options), _trained(messages, options), row, options)
        for row, (text, messages) in enumerate(zip(texts, batch, strict=True))
    ]
    ids, offsets = _tokenize(tokenizer, texts)
    masks = _masks_from_spans(ids, offsets, texts, spans, _special_tokens(tokenizer)[1])
    return {"input_ids": ids, "completion_mask": masks}


def encode_conversation(
    tokenizer: Any,
    messages: Sequence[Mapping[str, Any]],
    *,
    tools: Sequence[Mapping[str, Any]] | None = None,
    train_roles: Sequence[str] | str = ("assistant",),
    train_end_of_turn: bool = True,
    last_turn_only: bool = False,
    chat_template_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, list[int]]:
    """Token ids and completion mask of one conversation: :func:`encode_conversations` for one row.

    Example:
        >>> from trl_formatkit._toy import toy_tokenizer
        >>> from trl_formatkit import add_chat_template
        >>> tok = add_chat_template(toy_tokenizer())
        >>> out = encode_conversation(tok, [{"role": "user", "content": "hi"},
        ...                                 {"role": "assistant", "content": "hello"}], train_end_of_turn=False)
        >>> out["completion_mask"] == [0] * (len(out["input_ids"]) - 2) + [1, 0]
        True
    """
    out = encode_conversations(
        tokenizer,
        [messages],
        tools=tools,
        train_roles=train_roles,
        train_end_of_turn=train_end_of_turn,
        last_turn_only=last_turn_only,
        chat_template_kwargs=chat_template_kwargs,
    )
    return {"input_ids": out["input_ids"][0], "completion_mask": out["completion_mask"][0]}


def _probe_skeleton(tokenizer: Any) -> tuple[_Skeleton, int]:
    """The skeleton of ``[system,] user, assistant, user, assistant`` and the index of the first user turn."""
    options = _options(("assistant",), True, False, None, None)
    turns = [{"role": r, "content": ""} for r in ("user", "assistant", "user", "assistant")]
    try:
        skeleton = _skeleton(tokenizer, [{"role": "system", "content": ""}, *turns], options)
        if skeleton.before[0] is not None:
            return skeleton, 1
    except FormatKitValueError:  # a template that takes no system turn
        pass
    return _skeleton(tokenizer, turns, options), 0


def find_template_markers(tokenizer: Any) -> dict[str, str | None]:
    """The text a tokenizer's chat template writes before an assistant turn, before a user turn, and after a turn.

    Found by rendering a probe conversation (a system turn if the template takes one, then two user/assistant
    pairs) and reading the text around the second pair, so BOS and system prompts written once at the start
    are left out. These are the templates :class:`~trl_formatkit.DataCollatorForCompletionOnlyLM` takes
    (``DataCollatorForCompletionOnlyLM.from_tokenizer(tokenizer)`` builds one with them).

    Args:
        tokenizer: a tokenizer with a chat template.

    Returns:
        ``{"response_template": str, "instruction_template": str | None, "end_template": str | None}``; the end
        template is the end-of-turn marker (up to its first special token), ``None`` for templates whose turns
        end without one.

    Raises:
        FormatKitValueError: no chat template, one that cannot render the probe, or one that writes nothing
            before an assistant turn.

    Example:
        >>> from trl_formatkit._toy import toy_tokenizer
        >>> from trl_formatkit import add_chat_template
        >>> find_template_markers(add_chat_template(toy_tokenizer()))
        {'response_template': '<s>assistant\\n', 'instruction_template': '<s>user\\n', 'end_template': '</s>'}
    """
    _check_tokenizer(tokenizer)
    skeleton, first = _probe_skeleton(tokenizer)
    user, assistant = first + 2, first + 3  # the second pair

    def header(i: int) -> str:
        before = skeleton.before[i] or ""
        return before[len(skeleton.end_of_turn[i - 1][0]) :].lstrip() if i else before.lstrip()

    response = header(assistant)
    if not response.strip():
        raise FormatKitValueError(
            "the chat template writes nothing before an assistant turn, so no response template can mark it; "
            "pass response_template=... yourself, or train from the structure: encode_conversations(tokenizer, ...)"
        )
    instruction = header(user)
    return {
        "response_template": response,
        "instruction_template": instruction if instruction.strip() and instruction != response else None,
        "end_template": skeleton.end_of_turn[first + 1][0] or None,
    }
