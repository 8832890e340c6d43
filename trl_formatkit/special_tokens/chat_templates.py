"""Named chat templates and :func:`add_chat_template`: the one home for the templates this package writes.

:data:`CHAT_TEMPLATES` (name -> description) is read from the table ``NAMED_TEMPLATES``; each entry says how to
build its Jinja source for a tokenizer and which tokens it needs, and :func:`setup_chat_format` reads the same
table for its ``format=`` names.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import FormatKitKeyError, FormatKitTypeError, FormatKitValueError
from .probe import SAMPLE_CONVERSATION, render
from .vocab import Vocab, require_tokenizer, tok, tokenizer_name

__all__ = ["CHAT_TEMPLATES", "add_chat_template"]


def _jinja_literal(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def chatml(bos: str, eos: str, *, generation_markers: bool) -> str:
    """ChatML with ``bos`` opening and ``eos`` closing each turn (the chapter's ``jinja_template``)."""
    b, e = _jinja_literal(bos), _jinja_literal(eos)
    if not generation_markers:  # the chapter's jinja_template(), character for character
        return (
            "{% for message in messages %}"
            f"{{{{'{b}' + message['role'] + '\n' + message['content'] + '{e}' + '\n'}}}}"
            "{% endfor %}"
            "{% if add_generation_prompt %}"
            f"{{{{ '{b}assistant\n' }}}}"
            "{% endif %}"
        )
    return (
        "{% for message in messages %}"
        "{% if message['role'] == 'assistant' %}"
        f"{{{{'{b}' + message['role'] + '\n'}}}}"
        f"{{% generation %}}{{{{ message['content'] + '{e}' }}}}{{% endgeneration %}}"
        "{{ '\n' }}"
        "{% else %}"
        f"{{{{'{b}' + message['role'] + '\n' + message['content'] + '{e}' + '\n'}}}}"
        "{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}"
        f"{{{{ '{b}assistant\n' }}}}"
        "{% endif %}"
    )


def _chatml_bos_eos(tokenizer: Any, eos: str, generation_markers: bool) -> str:
    bos = tok(tokenizer.bos_token)
    if bos is None or bos == eos:
        raise FormatKitValueError(
            f"the chapter's ChatML opens each turn with BOS, but BOS is {bos!r}"
            f"{' (the EOS token)' if bos is not None else ''}; give the tokenizer its own BOS first "
            "(tokenizer.add_special_tokens({'bos_token': '<|im_start|>'}), then resize_embeddings(model, tokenizer)),"
            " or use add_chat_template(tokenizer, 'zephyr'), or setup_chat_format(model, tokenizer)"
        )
    return chatml(bos, eos, generation_markers=generation_markers)


def _chatml_im(tokenizer: Any, eos: str, generation_markers: bool) -> str:
    vocab = Vocab(tokenizer)
    missing = [t for t in NAMED_TEMPLATES["chatml"].tokens if t not in vocab]
    if missing:
        raise FormatKitValueError(
            f"template 'chatml' needs {missing} in the vocabulary; use setup_chat_format(model, tokenizer), "
            "which adds them and resizes the model, or add_chat_template(tokenizer) for the chapter's ChatML"
        )
    return chatml("<|im_start|>", "<|im_end|>", generation_markers=generation_markers)


def _zephyr(tokenizer: Any, eos: str, generation_markers: bool) -> str:
    gen, end = ("{% generation %}", "{% endgeneration %}") if generation_markers else ("", "")
    return (
        "{% for message in messages %}"
        "{{ '<|' + message['role'] + '|>\n' }}"
        "{% if message['role'] == 'assistant' %}"
        f"{gen}{{{{ message['content'] + eos_token }}}}{end}{{{{ '\n' }}}}"
        "{% else %}{{ message['content'] + eos_token + '\n' }}{% endif %}"
        "{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    )


@dataclass(frozen=True)
class NamedTemplate:
    """A template this package can write: its description, its builder, and the (BOS, EOS) it brings, if any."""

    description: str
    build: Callable[[Any, str, bool], str]  # (tokenizer, eos, generation_markers) -> Jinja source
    tokens: tuple[str, str] | None = None  # (BOS, EOS) that setup_chat_format adds; None: uses the tokenizer's


NAMED_TEMPLATES: dict[str, NamedTemplate] = {
    "chatml-bos-eos": NamedTemplate(
        "ChatML built from the tokenizer's own BOS/EOS, as in the book chapter (the default)", _chatml_bos_eos
    ),
    "chatml": NamedTemplate(
        "ChatML with <|im_start|>/<|im_end|> (they must be in the vocabulary; setup_chat_format adds them)",
        _chatml_im,
        ("<|im_start|>", "<|im_end|>"),
    ),
    "zephyr": NamedTemplate("<|user|>/<|assistant|> role lines, each message ended by the EOS token", _zephyr),
}

#: Named templates for :func:`add_chat_template`: name -> what it is.
CHAT_TEMPLATES: dict[str, str] = {name: entry.description for name, entry in NAMED_TEMPLATES.items()}


def _named_template(tokenizer: Any, name: str, generation_markers: bool) -> str:
    eos = tok(tokenizer.eos_token)
    if eos is None:
        raise FormatKitValueError(
            f"tokenizer {tokenizer_name(tokenizer)!r} has no EOS token, so a chat template could not end a turn; "
            "set one (tokenizer.add_special_tokens({'eos_token': ...})) or call setup_chat_format(model, tokenizer)"
        )
    return NAMED_TEMPLATES[name].build(tokenizer, eos, generation_markers)


def _check_template_renders(tokenizer: Any, template: str) -> None:
    try:
        for messages, prompt in (
            (SAMPLE_CONVERSATION, False),
            (SAMPLE_CONVERSATION[:2], False),
            (SAMPLE_CONVERSATION[:1], True),
        ):
            render(tokenizer, messages, template=template, add_generation_prompt=prompt)
    except FormatKitTypeError:
        raise
    except Exception as error:
        raise FormatKitValueError(
            f"the chat template does not render a plain user/assistant conversation ({type(error).__name__}: "
            f"{error}); fix the Jinja source, or pass a named template: {sorted(CHAT_TEMPLATES)}"
        ) from error


def add_chat_template(tokenizer: Any, template: str | None = None, *, generation_markers: bool = True) -> Any:
    """Give a tokenizer a chat template, in place: the chapter's ChatML by default.

    The default (``"chatml-bos-eos"``) is the chapter's ``jinja_template``: each message is
    ``BOS + role + "\\n" + content + EOS + "\\n"``, using the tokenizer's own BOS and EOS, so no token is added.
    With ``generation_markers=True`` (default) the assistant's content and its EOS sit inside
    ``{% generation %}`` so ``return_assistant_tokens_mask`` / trl's ``assistant_only_loss`` train the answer
    and the stop; the rendered text is the same either way. Where BOS equals EOS, give the tokenizer a BOS of
    its own first (or use ``"zephyr"``). Where the tokenizer adds BOS by itself (Llama), rendered text starts
    with BOS already: tokenize it with ``add_special_tokens=False`` (:func:`audit_tokenizer` reports this as
    ``double-bos``), or use ``apply_chat_template(..., tokenize=True)``.

    Args:
        tokenizer: the tokenizer (changed in place and returned).
        template: ``None`` for the chapter's ChatML, a name from :data:`CHAT_TEMPLATES`, or Jinja source.
        generation_markers: put ``{% generation %}`` markers around assistant answers (named templates only).

    Returns:
        The same tokenizer.

    Raises:
        FormatKitKeyError: ``template`` is neither a known name nor Jinja source.
        FormatKitValueError: the tokenizer has no usable EOS/BOS for the template, or the template does not
            render a plain user/assistant conversation.

    Example:
        >>> from trl_formatkit._toy import toy_tokenizer
        >>> tok = add_chat_template(toy_tokenizer())
        >>> print(tok.apply_chat_template([{"role": "user", "content": "hi"},
        ...                                {"role": "assistant", "content": "hello"}], tokenize=False))
        <s>user
        hi</s>
        <s>assistant
        hello</s>
        <BLANKLINE>
    """
    require_tokenizer(tokenizer)
    if template is None:
        template = "chatml-bos-eos"
    if not isinstance(template, str):
        raise FormatKitTypeError(f"template must be a name or Jinja source (str), got {type(template).__name__}")
    if "{%" in template or "{{" in template:
        source = template
    elif template in NAMED_TEMPLATES:
        source = _named_template(tokenizer, template, generation_markers)
    else:
        close = difflib.get_close_matches(template, CHAT_TEMPLATES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise FormatKitKeyError(
            f"unknown chat template {template!r}.{hint} Known: {sorted(CHAT_TEMPLATES)}; or pass Jinja source "
            "(a string with {% ... %} / {{ ... }})"
        )
    _check_template_renders(tokenizer, source)
    tokenizer.chat_template = source
    return tokenizer
