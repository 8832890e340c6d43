"""Special-token hygiene: find and fix what makes a model never stop, train on nothing, or crash on a new token.

The book chapter's "Tokenizer" and "BYOT" sections, turned into tools:

- :func:`audit_tokenizer` checks a tokenizer (and, given one, a model) and returns an :class:`AuditReport` whose
  ``.problems`` break training or generation (PAD equal to EOS, a template whose end-of-turn token is never
  trained, a tokenizer larger than the embedding matrix, ...) and whose ``.notes`` are advice. Each finding says
  what is wrong, the values, and the fix as code. The report prints as a table and renders as HTML in notebooks.
- :func:`fix_special_tokens`: the chapter's ``modify_tokenizer`` done right (EOS kept; PAD from UNK, else an
  unused reserved token, else a new ``<pad>``; BOS and UNK distinct from EOS; never grows the vocabulary when an
  existing token serves).
- :class:`SafeSpecialTokensMixin` / :func:`safe_tokenizer`: a tokenizer that refuses ``pad_token = eos_token``.
- :func:`add_chat_template`: the chapter's ChatML built from the tokenizer's own BOS/EOS (or a named template),
  with ``{% generation %}`` markers so assistant masks work.
- :func:`resize_embeddings`: the chapter's ``modify_model``: grow only when needed, keep the power-of-two multiple,
  sync ``config`` / ``generation_config``; returns the ids whose rows are new.
- :func:`new_token_lora_kwargs`: the ``LoraConfig`` arguments that make new tokens trainable.
- :func:`setup_chat_format`: trl's removed function, restored without PAD = EOS and without shrinking.

The module imports without torch, transformers, trl or datasets; each function imports what it needs.
"""

from __future__ import annotations

import html
import inspect
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .errors import FormatKitKeyError, FormatKitTypeError, FormatKitValueError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = [
    "AuditFinding",
    "AuditReport",
    "audit_tokenizer",
    "fix_special_tokens",
    "SafeSpecialTokensMixin",
    "safe_tokenizer",
    "add_chat_template",
    "CHAT_TEMPLATES",
    "resize_embeddings",
    "new_token_lora_kwargs",
    "setup_chat_format",
]

# A short conversation every check renders: two exchanges, so a template that ends only the last turn shows.
_SAMPLE_CONVERSATION = (
    {"role": "user", "content": "What is the capital of Argentina?"},
    {"role": "assistant", "content": "Buenos Aires."},
    {"role": "user", "content": "And of Chile?"},
    {"role": "assistant", "content": "Santiago."},
)

# Existing tokens that are meant for padding, by name (checked before reserved slots).
_PAD_NAMES = (
    "<pad>", "<PAD>", "[PAD]", "<|pad|>", "<|padding|>", "<|pad_token|>", "<|finetune_right_pad_id|>",
)  # fmt: skip
# Added tokens that are unused slots: Llama-3's <|reserved_special_token_N|>, Phi-3's <|placeholderN|>,
# Gemma's <unusedN>, Qwen's [PADN] / <|extra_N|>.
_RESERVED_RE = re.compile(r"reserved|placeholder|unused|^\[PAD\d+\]$|^<\|extra_\d+\|>$|^<pad_?\d+>$", re.IGNORECASE)
_GENERATION_TAG_RE = re.compile(r"{%-?\s*generation\s*-?%}")
_NEW_IDS_ATTR = "_formatkit_new_token_ids"  # ids trl-formatkit added to a tokenizer (their rows are untrained)


# --------------------------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------------------------


def _require_tokenizer(tokenizer: Any) -> None:
    missing = [a for a in ("convert_tokens_to_ids", "add_special_tokens", "get_vocab") if not hasattr(tokenizer, a)]
    if missing or not hasattr(tokenizer, "__len__"):
        raise FormatKitTypeError(
            f"expected a Hugging Face tokenizer (AutoTokenizer.from_pretrained(...)), got {type(tokenizer).__name__}"
            f" without {', '.join(missing) or '__len__'}; pass the tokenizer, not a processor or a string"
        )


class _Vocab(Mapping):
    """Token -> id lookups without building the whole vocabulary dict (150k entries cost ~0.2 s)."""

    def __init__(self, tokenizer: Any) -> None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._lookup = getattr(backend, "token_to_id", None)
        self._tokenizer = tokenizer
        self._dict: dict[str, int] | None = None if callable(self._lookup) else tokenizer.get_vocab()

    def get(self, token: Any, default: Any = None) -> Any:
        if self._dict is not None:
            return self._dict.get(token, default)
        if not isinstance(token, str):
            return default
        token_id = self._lookup(token)  # type: ignore[misc]
        return default if token_id is None else int(token_id)

    def __getitem__(self, token: str) -> int:
        token_id = self.get(token)
        if token_id is None:
            raise KeyError(token)
        return token_id

    def __contains__(self, token: object) -> bool:
        return self.get(token) is not None

    def _full(self) -> dict[str, int]:
        if self._dict is None:
            self._dict = self._tokenizer.get_vocab()
        return self._dict

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._full())

    def __len__(self) -> int:
        return len(self._full())


def _name(tokenizer: Any) -> str:
    path = str(getattr(tokenizer, "name_or_path", "") or "")
    return path.rstrip("/").rsplit("/", 1)[-1] or type(tokenizer).__name__


def _tok(value: Any) -> str | None:
    return None if value is None else str(value)


def _extra_special_tokens(tokenizer: Any) -> list[str]:
    for attr in ("extra_special_tokens", "additional_special_tokens"):
        try:
            value = getattr(tokenizer, attr)
        except AttributeError:
            continue
        if isinstance(value, dict):  # v5 model-specific named tokens
            return [str(v) for v in value.values()]
        if value:
            return [str(v) for v in value]
    return []


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    ids.update(i for i, tok in decoder.items() if getattr(tok, "special", False))
    return {int(i) for i in ids if i is not None}


def _used_tokens(tokenizer: Any) -> set[str]:
    """Tokens that already mean something: named special tokens, extra special tokens, tokens the template uses."""
    used = {
        str(getattr(tokenizer, attr))
        for attr in ("bos_token", "eos_token", "unk_token", "sep_token", "cls_token", "mask_token", "pad_token")
        if getattr(tokenizer, attr, None) is not None
    }
    used.update(_extra_special_tokens(tokenizer))
    template = _template_source(tokenizer)
    if template:
        decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        used.update(str(t) for t in decoder.values() if str(t) in template)
    return used


def _template_source(tokenizer: Any) -> str | None:
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):  # several named templates
        return "\n".join(str(t) for t in template.values())
    return template


def _record_new_ids(tokenizer: Any, start: int) -> None:
    new = set(range(start, len(tokenizer)))
    if new:
        old = set(getattr(tokenizer, _NEW_IDS_ATTR, ()) or ())
        object.__setattr__(tokenizer, _NEW_IDS_ATTR, sorted(old | new))


def _add_special_tokens(tokenizer: Any, named: Mapping[str, str], extras: Sequence[str] = ()) -> None:
    """``add_special_tokens`` that extends (never replaces) the extra special tokens, on transformers 4 and 5."""
    params = inspect.signature(tokenizer.add_special_tokens).parameters
    special: dict[str, Any] = dict(named)
    kwargs: dict[str, Any] = {}
    if extras:
        if "replace_extra_special_tokens" in params:
            special["extra_special_tokens"] = list(extras)
            kwargs["replace_extra_special_tokens"] = False
        else:  # transformers 4.x
            special["additional_special_tokens"] = list(extras)
            kwargs["replace_additional_special_tokens"] = False
    if special:
        tokenizer.add_special_tokens(special, **kwargs)


def _pad_candidate(
    tokenizer: Any, vocab: Mapping[str, int], *, unk: str | None, eos: str, also: Sequence[str | None] = ()
) -> tuple[str, str]:
    """The token the fix would use as PAD, and why (the chapter's order, plus reserved slots)."""
    if unk is not None and unk != eos:
        return unk, "the UNK token; PAD and UNK may be the same"
    used = _used_tokens(tokenizer) | {eos}
    for name in _PAD_NAMES:
        if name in vocab and name not in used:
            return name, "an existing padding token"
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    reserved = [(i, str(t)) for i, t in decoder.items() if _RESERVED_RE.search(str(t)) and str(t) not in used]
    if reserved:
        # the highest id: vendors hand out reserved slots from the low end (Llama-3's <|eot_id|> was one)
        _, token = max(reserved)
        return token, "an unused reserved token"
    for token in also:
        if token is not None and token in vocab and token not in used:
            return token, "the former EOS token, no longer used to stop"
    return "<pad>", "a new token: no UNK and no unused reserved token to reuse"


@dataclass(frozen=True)
class _Plan:
    bos: str | None
    unk: str | None
    pad: str
    pad_reason: str
    changes: dict[str, tuple[str | None, str | None]]  # name -> (old, new)
    new_tokens: list[str]


def _plan_fix(
    tokenizer: Any,
    *,
    alternative_bos_token: str | None = "<|im_start|>",
    alternative_unk_token: str = "<unk>",
    pad_token: str | None = None,
    unk_token: str | None = None,
) -> _Plan:
    vocab = _Vocab(tokenizer)
    eos = _tok(tokenizer.eos_token)
    if eos is None:
        raise FormatKitValueError(
            f"tokenizer {_name(tokenizer)!r} has no EOS token, so there is nothing to keep and nothing to stop on; "
            "set one first, e.g. tokenizer.add_special_tokens({'eos_token': '</s>'}) with the token your model "
            "was trained to end texts with, then call fix_special_tokens(tokenizer) again"
        )
    if eos not in vocab:
        raise FormatKitValueError(
            f"tokenizer {_name(tokenizer)!r} has EOS {eos!r}, which is not in its vocabulary (it encodes to UNK); "
            f"add it with tokenizer.add_special_tokens({{'eos_token': {eos!r}}}) or set an EOS from the vocabulary"
        )
    old_bos, old_unk, old_pad = _tok(tokenizer.bos_token), _tok(tokenizer.unk_token), _tok(tokenizer.pad_token)
    bos, unk = old_bos, (unk_token if unk_token is not None else old_unk)
    if bos == eos:
        bos = alternative_bos_token
    if unk == eos:
        unk = alternative_unk_token
    for name, value in (("alternative_bos_token", bos), ("alternative_unk_token / unk_token", unk)):
        if value is not None and value == eos:
            raise FormatKitValueError(
                f"{name}={value!r} is the EOS token; choose a different token (EOS must only mark the end)"
            )
    if pad_token is not None:
        if pad_token == eos:
            raise FormatKitValueError(
                f"pad_token={pad_token!r} is the EOS token: a collator that masks the pad id would never train the "
                "model to stop; leave pad_token=None to let fix_special_tokens choose (UNK, then a reserved token, "
                "then a new '<pad>')"
            )
        pad, reason = pad_token, "chosen by the caller"
    elif old_pad is not None and old_pad != eos and old_pad in vocab:
        pad, reason = old_pad, "kept: it already differs from EOS"
    else:
        pad, reason = _pad_candidate(tokenizer, vocab, unk=unk, eos=eos)
    changes = {
        name: (old, new)
        for name, old, new in (("bos_token", old_bos, bos), ("unk_token", old_unk, unk), ("pad_token", old_pad, pad))
        if old != new
    }
    new_tokens = list(dict.fromkeys(t for t in (bos, unk, pad) if t is not None and t not in vocab))
    return _Plan(bos=bos, unk=unk, pad=pad, pad_reason=reason, changes=changes, new_tokens=new_tokens)


# --------------------------------------------------------------------------------------------------------------
# the report
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditFinding:
    """One thing :func:`audit_tokenizer` found.

    Attributes:
        code: a stable short name, e.g. ``"pad-equals-eos"`` (filter or silence findings by it).
        severity: ``"problem"`` (breaks training or generation) or ``"note"`` (advice).
        message: what is wrong and what it causes.
        values: the values involved (token strings and ids, sizes).
        fix: the fix, as code.
    """

    code: str
    severity: Literal["problem", "note"]
    message: str
    values: Mapping[str, Any] = field(default_factory=dict)
    fix: str = ""

    def values_text(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.values.items())


@dataclass
class AuditReport:
    """What :func:`audit_tokenizer` found. Prints as a table; renders as HTML in notebooks.

    Attributes:
        name: the tokenizer's name (its folder or hub id).
        problems: findings that break training or generation; empty when the tokenizer is fine.
        notes: advice that does not break anything.
        special_tokens: ``{"eos_token": ("<|endoftext|>", 32000), ...}`` as audited.
        purpose: ``"training"`` or ``"generation"``: what the audit checked for.
    """

    name: str
    problems: list[AuditFinding] = field(default_factory=list)
    notes: list[AuditFinding] = field(default_factory=list)
    special_tokens: dict[str, tuple[str | None, int | None]] = field(default_factory=dict)
    purpose: str = "training"

    @property
    def ok(self) -> bool:
        """True when there are no problems (notes do not count)."""
        return not self.problems

    @property
    def codes(self) -> list[str]:
        """The codes of the problems, then of the notes."""
        return [f.code for f in self.problems] + [f.code for f in self.notes]

    def raise_for_problems(self) -> AuditReport:
        """Raise :class:`~trl_formatkit.errors.FormatKitValueError` listing the problems; return self if none."""
        if self.problems:
            lines = [f"tokenizer {self.name!r} has {len(self.problems)} special-token problem(s):"]
            for f in self.problems:
                lines.append(f"- [{f.code}] {f.message} ({f.values_text()}); fix: {f.fix}")
            raise FormatKitValueError("\n".join(lines))
        return self

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for logs and CI)."""

        def one(f: AuditFinding) -> dict[str, Any]:
            return {"code": f.code, "message": f.message, "values": dict(f.values), "fix": f.fix}

        return {
            "name": self.name,
            "purpose": self.purpose,
            "special_tokens": {k: list(v) for k, v in self.special_tokens.items()},
            "problems": [one(f) for f in self.problems],
            "notes": [one(f) for f in self.notes],
        }

    def __repr__(self) -> str:
        return (
            f"AuditReport(name={self.name!r}, problems={[f.code for f in self.problems]}, "
            f"notes={[f.code for f in self.notes]})"
        )

    def __rich__(self) -> Any:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        tokens = Table(title=f"special tokens of {self.name}", show_lines=False, title_justify="left")
        tokens.add_column("token")
        tokens.add_column("string")
        tokens.add_column("id", justify="right")
        for key, (text, token_id) in self.special_tokens.items():
            tokens.add_row(key, repr(text) if text is not None else "-", "-" if token_id is None else str(token_id))
        verdict = (
            Text(f"{len(self.problems)} problem(s), {len(self.notes)} note(s) ({self.purpose})", style="bold red")
            if self.problems
            else Text(f"no problems, {len(self.notes)} note(s) ({self.purpose})", style="bold green")
        )
        findings = Table(show_lines=True)
        for column in ("", "code", "what is wrong", "values", "fix"):
            findings.add_column(column, overflow="fold")
        for f in [*self.problems, *self.notes]:
            mark = Text("problem", style="red") if f.severity == "problem" else Text("note", style="dim")
            findings.add_row(mark, f.code, f.message, f.values_text(), f.fix)
        parts: list[Any] = [tokens, verdict]
        if self.problems or self.notes:
            parts.append(findings)
        return Group(*parts)

    def __str__(self) -> str:
        import io

        from rich.console import Console

        buffer = io.StringIO()
        Console(file=buffer, width=140, color_system=None, force_terminal=False, legacy_windows=False).print(
            self.__rich__()
        )
        return buffer.getvalue()

    def _repr_html_(self) -> str:
        esc = html.escape
        rows = "".join(
            f"<tr><td>{esc(k)}</td><td><code>{esc(repr(t)) if t is not None else '-'}</code></td>"
            f"<td>{'-' if i is None else i}</td></tr>"
            for k, (t, i) in self.special_tokens.items()
        )
        head = (
            f"<b style='color:#b00'>{len(self.problems)} problem(s)</b>"
            if self.problems
            else "<b style='color:#070'>no problems</b>"
        )
        findings = "".join(
            f"<tr><td style='color:{'#b00' if f.severity == 'problem' else '#666'}'>{f.severity}</td>"
            f"<td><code>{esc(f.code)}</code></td><td>{esc(f.message)}</td><td><code>{esc(f.values_text())}</code>"
            f"</td><td><pre style='margin:0'>{esc(f.fix)}</pre></td></tr>"
            for f in [*self.problems, *self.notes]
        )
        table = (
            "<table><thead><tr><th></th><th>code</th><th>what is wrong</th><th>values</th><th>fix</th></tr>"
            f"</thead><tbody>{findings}</tbody></table>"
            if findings
            else ""
        )
        return (
            f"<div class='trl-formatkit-audit'><p>special tokens of <b>{esc(self.name)}</b>: {head}, "
            f"{len(self.notes)} note(s) ({esc(self.purpose)})</p>"
            f"<table><thead><tr><th>token</th><th>string</th><th>id</th></tr></thead><tbody>{rows}</tbody></table>"
            f"{table}</div>"
        )


# --------------------------------------------------------------------------------------------------------------
# chat template analysis
# --------------------------------------------------------------------------------------------------------------


@dataclass
class _TemplateFacts:
    error: str | None = None
    text: str | None = None
    end_of_turn_id: int | None = None
    tail_ids: list[int] = field(default_factory=list)
    mid_turn_has_end: bool | None = None
    has_generation_markers: bool = False
    end_of_turn_in_generation: bool | None = None
    generation_marks_nothing: bool = False
    double_bos: bool = False
    located: bool = True


def _render(
    tokenizer: Any,
    messages: Sequence[Mapping[str, str]],
    *,
    template: str | None = None,
    add_generation_prompt: bool = False,
) -> str:
    kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": add_generation_prompt}
    if template is not None:
        kwargs["chat_template"] = template
    text = tokenizer.apply_chat_template([dict(m) for m in messages], **kwargs)
    if not isinstance(text, str):
        raise FormatKitTypeError(f"apply_chat_template(tokenize=False) returned {type(text).__name__}, not str")
    return text


def _encode(tokenizer: Any, text: str, *, add_special_tokens: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=add_special_tokens)["input_ids"])


def _analyse_template(tokenizer: Any) -> _TemplateFacts | None:
    """Render the sample conversation and look at what follows the assistant's last word."""
    template = _template_source(tokenizer)
    if not template:
        return None
    facts = _TemplateFacts(has_generation_markers=bool(_GENERATION_TAG_RE.search(template)))
    try:
        text = _render(tokenizer, _SAMPLE_CONVERSATION)
    except Exception as error:  # any Jinja or template error: report it
        facts.error = f"{type(error).__name__}: {error}"
        return facts
    facts.text = text
    last = _SAMPLE_CONVERSATION[-1]["content"]
    end = text.rfind(last)
    if end < 0:
        facts.located = False
        return facts
    end += len(last)
    facts.tail_ids = _encode(tokenizer, text[end:])
    specials = _special_ids(tokenizer)
    facts.end_of_turn_id = next((i for i in facts.tail_ids if i in specials), None)
    first_end = text.find(_SAMPLE_CONVERSATION[1]["content"])
    next_user = text.find(_SAMPLE_CONVERSATION[2]["content"])
    if facts.end_of_turn_id is not None and 0 <= first_end < next_user:
        middle = text[first_end + len(_SAMPLE_CONVERSATION[1]["content"]) : next_user]
        facts.mid_turn_has_end = facts.end_of_turn_id in _encode(tokenizer, middle)
    bos_id = tokenizer.bos_token_id
    if bos_id is not None:
        with_specials = _encode(tokenizer, text, add_special_tokens=True)
        facts.double_bos = with_specials[:2] == [bos_id, bos_id]
    if facts.has_generation_markers and facts.end_of_turn_id is not None:
        try:
            out = tokenizer.apply_chat_template(
                [dict(m) for m in _SAMPLE_CONVERSATION],
                tokenize=True,
                return_dict=True,
                return_assistant_tokens_mask=True,
            )
            ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
        except Exception:  # slow tokenizers cannot build assistant masks: leave unknown
            return facts
        trained = [i for i, m in enumerate(mask) if m]
        if not trained:
            facts.generation_marks_nothing = True
            facts.end_of_turn_in_generation = False
            return facts
        stop = trained[-1]
        start = stop
        while start > 0 and mask[start - 1]:
            start -= 1
        facts.end_of_turn_in_generation = facts.end_of_turn_id in ids[start : stop + 1]
    return facts


def _end_of_turn_id(tokenizer: Any) -> int | None:
    try:
        facts = _analyse_template(tokenizer)
    except Exception:
        return None
    return None if facts is None or facts.error else facts.end_of_turn_id


# --------------------------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------------------------


def _input_embeddings(model: Any) -> torch.nn.Module:
    getter = getattr(model, "get_input_embeddings", None)
    embedding = None
    if callable(getter):
        try:
            embedding = getter()
        except (NotImplementedError, AttributeError):
            embedding = None
    if embedding is None or not hasattr(embedding, "weight"):
        raise FormatKitTypeError(
            f"model {type(model).__name__} has no input embeddings (get_input_embeddings() gave "
            f"{type(embedding).__name__ if embedding is not None else 'nothing'}); pass a transformers model such as "
            "AutoModelForCausalLM.from_pretrained(...), or its PEFT wrapper"
        )
    return embedding


def _num_rows(module: Any) -> int:
    rows = getattr(module, "num_embeddings", None) or getattr(module, "out_features", None)
    return int(rows if rows is not None else module.weight.shape[0])


def _is_quantized(module: Any) -> bool:
    weight = getattr(module, "weight", None)
    names = {type(module).__name__, type(weight).__name__}
    return bool(names & {"Params4bit", "Int8Params", "Linear4bit", "Linear8bitLt", "Embedding4bit", "Embedding8bit"})


def _check_resizable(model: Any) -> tuple[Any, Any]:
    embedding = _input_embeddings(model)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for role, module in (("input embedding", embedding), ("output embedding (lm_head)", output)):
        if module is None:
            continue
        if type(module).__module__.startswith("peft"):
            raise FormatKitTypeError(
                f"the model's {role} is wrapped by PEFT ({type(module).__name__}: modules_to_save or "
                "trainable_token_indices), which cannot be resized in place; resize the base model first, then call "
                "get_peft_model(model, LoraConfig(..., **new_token_lora_kwargs(model, new_ids)))"
            )
        if _is_quantized(module):
            raise FormatKitTypeError(
                f"the model's {role} is quantised ({type(module).__name__}), so its rows cannot be added; load "
                "with BitsAndBytesConfig(..., llm_int8_skip_modules=['lm_head']) (transformers keeps embeddings "
                "unquantised by default) or resize before quantising"
            )
    return embedding, output


def _eos_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def _configs(model: Any) -> list[Any]:
    configs = []
    config = getattr(model, "config", None)
    if config is not None:
        configs.append(config)
        get_text = getattr(config, "get_text_config", None)
        text_config = get_text() if callable(get_text) else None
        if text_config is not None and text_config is not config:
            configs.append(text_config)
    return configs


def _merged_eos(old: Any, eos_id: int | None, *, pad_id: int | None, end_of_turn_id: int | None) -> Any:
    if eos_id is None:
        return old
    extra = [i for i in _eos_list(old) if i not in (eos_id, pad_id)]
    if end_of_turn_id is not None and end_of_turn_id not in (eos_id, pad_id) and end_of_turn_id not in extra:
        extra.append(end_of_turn_id)
    return [eos_id, *extra] if extra else eos_id


def _sync_token_ids(model: Any, tokenizer: Any) -> None:
    """Make ``config`` and ``generation_config`` use the tokenizer's PAD/BOS/EOS (and the template's end-of-turn)."""
    pad_id, bos_id, eos_id = tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id
    end_of_turn = _end_of_turn_id(tokenizer)
    for config in _configs(model):
        config.pad_token_id = pad_id
        config.bos_token_id = bos_id
        if eos_id is not None:
            # config.eos_token_id: the tokenizer's EOS (a list there only where it already was one)
            old = getattr(config, "eos_token_id", None)
            config.eos_token_id = (
                _merged_eos(old, eos_id, pad_id=pad_id, end_of_turn_id=None) if isinstance(old, list) else eos_id
            )
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.pad_token_id = pad_id
        generation_config.bos_token_id = bos_id
        generation_config.eos_token_id = _merged_eos(
            generation_config.eos_token_id, eos_id, pad_id=pad_id, end_of_turn_id=end_of_turn
        )


# --------------------------------------------------------------------------------------------------------------
# audit
# --------------------------------------------------------------------------------------------------------------


def audit_tokenizer(
    tokenizer: Any, model: Any = None, *, purpose: Literal["training", "generation"] = "training"
) -> AuditReport:
    """Check a tokenizer (and a model) for the special-token mistakes that break fine-tuning or generation.

    Problems (``report.problems``) break training or generation; notes (``report.notes``) are advice. Checked:

    - ``eos-missing``, ``token-not-in-vocab``: no EOS; a special token that is not in the vocabulary.
    - ``pad-missing``, ``pad-equals-eos``: no PAD (trl and many scripts then set PAD = EOS), or PAD == EOS (a
      collator that masks the pad id, like transformers' ``DataCollatorForLanguageModeling``, gives every EOS the
      label -100: the model never learns to stop).
    - ``bos-equals-eos``, ``unk-equals-eos``: EOS must only mark the end.
    - ``chat-template-missing``, ``chat-template-error``: no template, or one that does not render a plain
      user/assistant conversation.
    - ``double-bos``: the template writes BOS and the tokenizer adds another when the rendered text is tokenized.
    - ``no-end-of-turn``: nothing special follows the assistant's answer: the model has no token to stop on.
    - ``end-of-turn-is-pad``: the assistant's end-of-turn token is the PAD token: pad-masking collators drop it.
    - ``end-of-turn-outside-generation``: the template's ``{% generation %}`` block ends before the end-of-turn
      token, so assistant-only masks never train it.
    - ``end-of-turn-not-eos`` (problem with a model, else a note): generation stops on EOS, but turns end with
      another token that ``generation_config.eos_token_id`` lacks.
    - with a model: ``vocab-exceeds-embeddings`` (ids past the embedding matrix crash or read garbage),
      ``config-token-ids`` (``config`` / ``generation_config`` ids disagree with the tokenizer),
      ``generation-pad-in-eos`` (the generation pad id is one of the EOS ids).
    - ``padding-right``: a problem for ``purpose="generation"`` (batched generation continues after the pad
      tokens), a note for training.

    Args:
        tokenizer: a Hugging Face tokenizer.
        model: optionally the model (plain, PEFT-wrapped or quantised) to check against the tokenizer.
        purpose: ``"training"`` (default) or ``"generation"``; only changes how right padding is judged.

    Returns:
        An :class:`AuditReport`: ``.problems``, ``.notes``, ``.ok``; ``print(report)`` shows a table.

    Raises:
        FormatKitTypeError: ``tokenizer`` is not a tokenizer, or ``model`` has no input embeddings.
        FormatKitValueError: ``purpose`` is not ``"training"`` or ``"generation"``.

    Example:
        >>> from trl_formatkit._toy import toy_tokenizer
        >>> tok = toy_tokenizer(pad_token="</s>")           # PAD == EOS, as phi-3-mini ships
        >>> report = audit_tokenizer(tok)
        >>> [f.code for f in report.problems]
        ['pad-equals-eos', 'chat-template-missing']
        >>> print(report.problems[0].fix)
        fix_special_tokens(tokenizer)  # pad_token: '</s>' -> '<unk>' (id 0)
    """
    _require_tokenizer(tokenizer)
    if purpose not in ("training", "generation"):
        raise FormatKitValueError(f"purpose={purpose!r} is not allowed; use 'training' or 'generation'")
    vocab = _Vocab(tokenizer)
    eos, bos, unk, pad = (_tok(getattr(tokenizer, a)) for a in ("eos_token", "bos_token", "unk_token", "pad_token"))
    report = AuditReport(
        name=_name(tokenizer),
        purpose=purpose,
        special_tokens={
            name: (value, vocab.get(value) if value is not None else None)
            for name, value in (("bos_token", bos), ("eos_token", eos), ("unk_token", unk), ("pad_token", pad))
        },
    )

    def problem(code: str, message: str, values: Mapping[str, Any], fix: str) -> None:
        report.problems.append(AuditFinding(code, "problem", message, dict(values), fix))

    def note(code: str, message: str, values: Mapping[str, Any], fix: str = "") -> None:
        report.notes.append(AuditFinding(code, "note", message, dict(values), fix))

    eos_id = vocab.get(eos) if eos is not None else None
    pad_id = vocab.get(pad) if pad is not None else None

    # the fix_special_tokens plan, to write concrete fixes
    try:
        plan = _plan_fix(tokenizer) if eos_id is not None else None
    except FormatKitValueError:
        plan = None

    def plan_fix(*names: str) -> str:
        if plan is None:
            return "fix_special_tokens(tokenizer)"
        parts = []
        for n in names:
            if n in plan.changes:
                old, new = plan.changes[n]
                where = f"id {vocab[new]}" if new in vocab else "new token"
                parts.append(f"{n}: {old!r} -> {new!r} ({where})")
        return "fix_special_tokens(tokenizer)" + (f"  # {'; '.join(parts)}" if parts else "")

    # ---- EOS
    if eos is None:
        problem(
            "eos-missing",
            "the tokenizer has no EOS token: nothing marks the end of a text, so nothing teaches the model to stop",
            {"eos_token": None},
            "tokenizer.add_special_tokens({'eos_token': '</s>'})  # the token your model ends texts with",
        )
    for name, value in (("eos_token", eos), ("bos_token", bos), ("unk_token", unk), ("pad_token", pad)):
        if value is not None and value not in vocab:
            problem(
                "token-not-in-vocab",
                f"{name} {value!r} is not in the vocabulary: it encodes to UNK or fails",
                {name: value},
                f"tokenizer.add_special_tokens({{{name!r}: {value!r}}})  # then resize_embeddings(model, tokenizer)",
            )

    # ---- PAD
    if eos is not None:
        if pad is None:
            problem(
                "pad-missing",
                "the tokenizer has no PAD token: collators cannot pad, and trl and many scripts then set "
                "PAD = EOS, so the model never learns to stop",
                {"pad_token": None, "eos_token": eos},
                plan_fix("pad_token"),
            )
        elif pad == eos:
            problem(
                "pad-equals-eos",
                f"PAD is the EOS token (id {eos_id}): a collator that masks padding by the pad id "
                "(DataCollatorForLanguageModeling) gives every EOS the label -100, so the model never learns to stop",
                {"pad_token": pad, "pad_token_id": pad_id, "eos_token_id": eos_id},
                plan_fix("pad_token"),
            )
        elif unk is not None and pad == unk:
            note(
                "pad-equals-unk",
                "PAD is the UNK token: fine (the chapter does this); both stay distinct from EOS",
                {"pad_token": pad, "pad_token_id": pad_id},
            )
    # ---- BOS / UNK
    if eos is not None and bos == eos:
        problem(
            "bos-equals-eos",
            "BOS is the EOS token: EOS must only mark the end (a text that starts with it reads as finished)",
            {"bos_token": bos, "eos_token": eos, "id": eos_id},
            plan_fix("bos_token"),
        )
    if eos is not None and unk == eos:
        problem(
            "unk-equals-eos",
            "UNK is the EOS token: every unknown character ends the text",
            {"unk_token": unk, "eos_token": eos, "id": eos_id},
            plan_fix("unk_token"),
        )

    # ---- padding side
    side = getattr(tokenizer, "padding_side", "right")
    if side == "right":
        if purpose == "generation":
            problem(
                "padding-right",
                "right padding for generation: the model continues after the pad tokens of shorter prompts",
                {"padding_side": side},
                "tokenizer.padding_side = 'left'",
            )
        else:
            note(
                "padding-right",
                "right padding is fine for training (labels of padding are -100); use left padding for batched "
                "generation",
                {"padding_side": side},
                "tokenizer.padding_side = 'left'  # before model.generate on a batch",
            )

    # ---- chat template
    facts = _analyse_template(tokenizer)
    if facts is None:
        problem(
            "chat-template-missing",
            "the tokenizer has no chat template: conversational datasets and apply_chat_template fail "
            "(ignore this if you train on plain text with your own formatting_func)",
            {"chat_template": None},
            "add_chat_template(tokenizer)  # ChatML from its own BOS/EOS, as in the chapter",
        )
    elif facts.error:
        problem(
            "chat-template-error",
            "the chat template does not render a plain user/assistant conversation",
            {"error": facts.error},
            "add_chat_template(tokenizer, template=...)  # or fix the Jinja source in tokenizer.chat_template",
        )
    elif not facts.located:
        note(
            "template-rewrites-content",
            "the chat template changes the message text, so the end-of-turn checks were skipped",
            {"sample": _SAMPLE_CONVERSATION[-1]["content"]},
        )
    else:
        eot = facts.end_of_turn_id
        eot_token = tokenizer.convert_ids_to_tokens(eot) if eot is not None else None
        if facts.double_bos:
            problem(
                "double-bos",
                "the chat template writes BOS and the tokenizer adds another one when the rendered text is "
                "tokenized (a formatting_func or a text column: tokenizer(text)): every sample starts with two BOS "
                "tokens; apply_chat_template(tokenize=True) is not affected",
                {"bos_token": bos, "bos_token_id": tokenizer.bos_token_id},
                "tokenizer(text, add_special_tokens=False)  # or apply_chat_template(..., tokenize=True)",
            )
        if eot is None:
            problem(
                "no-end-of-turn",
                "no special token follows the assistant's answer: the model has no token to stop on "
                "(the template drops EOS)",
                {"after_answer": tokenizer.decode(facts.tail_ids) if facts.tail_ids else ""},
                "add_chat_template(tokenizer)  # or end assistant turns with '{{ eos_token }}' in the template",
            )
        else:
            if eot == pad_id and pad != eos:
                problem(
                    "end-of-turn-is-pad",
                    f"assistant turns end with {eot_token!r}, which is the PAD token: a collator that masks the pad "
                    "id drops it, so the model never learns to end a turn",
                    {"end_of_turn": eot_token, "id": eot, "pad_token": pad},
                    "fix_special_tokens(tokenizer, pad_token={!r})".format(
                        _pad_candidate(tokenizer, vocab, unk=None if unk == eot_token else unk, eos=eos or "")[0]
                    ),
                )
            if facts.end_of_turn_in_generation is False:
                problem(
                    "end-of-turn-outside-generation",
                    (
                        "the {% generation %} block marks no token"
                        if facts.generation_marks_nothing
                        else f"the {{% generation %}} block ends before {eot_token!r}: assistant-only masks "
                        "(assistant_only_loss, return_assistant_tokens_mask) never train the model to end a turn"
                    ),
                    {"end_of_turn": eot_token, "id": eot},
                    "move {% endgeneration %} after the end-of-turn token, or add_chat_template(tokenizer)",
                )
            if facts.mid_turn_has_end is False:
                note(
                    "end-of-turn-only-last",
                    f"only the last assistant turn ends with {eot_token!r}; earlier turns teach no stop",
                    {"end_of_turn": eot_token, "id": eot},
                    "add_chat_template(tokenizer)",
                )
            if not facts.has_generation_markers:
                note(
                    "no-generation-markers",
                    "the template has no {% generation %} markers: assistant_only_loss and "
                    "return_assistant_tokens_mask cannot find the answers; train completions with "
                    "DataCollatorForCompletionOnlyLM and a response template instead",
                    {},
                    "add_chat_template(tokenizer)  # a template with markers",
                )
            generation_eos = set(_eos_list(getattr(getattr(model, "generation_config", None), "eos_token_id", None)))
            stop_ids = {eos_id} | generation_eos
            if eot not in stop_ids:
                values = {"end_of_turn": eot_token, "id": eot, "eos_token_id": eos_id}
                fix = f"model.generation_config.eos_token_id = {[i for i in [eos_id, eot] if i is not None]}"
                message = (
                    f"assistant turns end with {eot_token!r} but generation stops on EOS ({eos!r}): without "
                    f"{eot} in generation_config.eos_token_id the model talks on past the end of its turn"
                )
                if model is not None:
                    values["generation_config.eos_token_id"] = sorted(generation_eos)
                    problem("end-of-turn-not-eos", message, values, fix + "  # resize_embeddings does this")
                else:
                    note("end-of-turn-not-eos", message, values, fix)

    # ---- model
    if model is not None:
        _audit_model(tokenizer, model, problem, note)
    return report


def _audit_model(tokenizer: Any, model: Any, problem: Any, note: Any) -> None:
    embedding = _input_embeddings(model)
    rows = _num_rows(embedding)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    size = len(tokenizer)
    if size > rows:
        problem(
            "vocab-exceeds-embeddings",
            f"the tokenizer has {size} tokens but the embedding matrix {rows} rows: ids {rows}..{size - 1} index "
            "past it (a CUDA device-side assert, or an IndexError on CPU)",
            {"len(tokenizer)": size, "embedding_rows": rows},
            "new_ids = resize_embeddings(model, tokenizer)  # grows to a multiple of "
            f"{rows & -rows}",
        )
    elif size < rows:
        note(
            "empty-embedding-slots",
            f"{rows - size} embedding rows are not used by the tokenizer: new tokens fit there without resizing "
            "(their rows are untrained: train them, see new_token_lora_kwargs)",
            {"len(tokenizer)": size, "embedding_rows": rows},
        )
    if output is not None and hasattr(output, "weight") and _num_rows(output) < size:
        problem(
            "vocab-exceeds-embeddings",
            f"the output layer has {_num_rows(output)} rows for {size} tokens",
            {"len(tokenizer)": size, "lm_head_rows": _num_rows(output)},
            "resize_embeddings(model, tokenizer)",
        )
    padding_idx = getattr(embedding, "padding_idx", None)
    if padding_idx is not None and padding_idx != tokenizer.pad_token_id:
        note(
            "embedding-padding-idx",
            f"the embedding's padding_idx ({padding_idx}) is not the pad id: row {padding_idx} gets no gradient",
            {"padding_idx": padding_idx, "pad_token_id": tokenizer.pad_token_id},
        )
    wanted = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id}
    eos_id = tokenizer.eos_token_id
    for where, config in [("config", c) for c in _configs(model)[:1]] + [
        ("generation_config", getattr(model, "generation_config", None))
    ]:
        if config is None:
            continue
        for key, value in wanted.items():
            have = getattr(config, key, None)
            if value is not None and have != value:
                problem(
                    "config-token-ids",
                    f"model.{where}.{key} is {have!r} but the tokenizer's is {value!r}",
                    {f"{where}.{key}": have, f"tokenizer.{key}": value},
                    "resize_embeddings(model, tokenizer)  # syncs config and generation_config",
                )
        have_eos = _eos_list(getattr(config, "eos_token_id", None))
        if eos_id is not None and eos_id not in have_eos:
            problem(
                "config-token-ids",
                f"model.{where}.eos_token_id is {getattr(config, 'eos_token_id', None)!r}, which lacks the "
                f"tokenizer's EOS {eos_id}: generation would not stop on it",
                {f"{where}.eos_token_id": getattr(config, "eos_token_id", None), "tokenizer.eos_token_id": eos_id},
                "resize_embeddings(model, tokenizer)  # syncs config and generation_config",
            )
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        gen_pad = getattr(generation_config, "pad_token_id", None)
        gen_eos = _eos_list(getattr(generation_config, "eos_token_id", None))
        if gen_pad is not None and gen_pad in gen_eos:
            problem(
                "generation-pad-in-eos",
                "generation_config.pad_token_id is one of its EOS ids: padded batches look finished, and a model "
                "fine-tuned this way pads instead of stopping",
                {"pad_token_id": gen_pad, "eos_token_id": gen_eos},
                "fix_special_tokens(tokenizer); resize_embeddings(model, tokenizer)",
            )


# --------------------------------------------------------------------------------------------------------------
# fix
# --------------------------------------------------------------------------------------------------------------


def fix_special_tokens(
    tokenizer: Any,
    *,
    alternative_bos_token: str | None = "<|im_start|>",
    alternative_unk_token: str = "<unk>",
    pad_token: str | None = None,
    unk_token: str | None = None,
    extra_special_tokens: Sequence[str] | None = None,
    special_tokens: Sequence[str] | None = None,
    tokens: Sequence[str] | None = None,
) -> Any:
    """Make PAD, BOS and UNK distinct from EOS, in place: the chapter's ``modify_tokenizer``, done right.

    - EOS is kept.
    - PAD, when missing or equal to EOS: the UNK token where it exists and differs from EOS (the chapter: PAD
      and UNK may be the same); else an existing padding token (``<pad>``, ``<|finetune_right_pad_id|>``, ...);
      else an unused reserved/placeholder token (Llama-3's ``<|reserved_special_token_N|>``, the highest id);
      else a new ``<pad>`` token. A PAD that already differs from EOS is kept.
    - BOS equal to EOS becomes ``alternative_bos_token`` (``None`` unsets BOS); UNK equal to EOS becomes
      ``alternative_unk_token``. A missing UNK stays missing unless ``unk_token`` is given (byte-level BPE
      tokenizers such as GPT-2's never produce one).
    - ``extra_special_tokens`` are added as single, never-split tokens (a response template such as
      ``"##[YODA]##>"``), next to the existing ones; ``tokens`` are added as ordinary tokens.

    Existing tokens are reused wherever one serves, so the vocabulary only grows by tokens that did not exist.
    The ids of new tokens are remembered on the tokenizer, and :func:`resize_embeddings` returns them so you can
    train them. What the tokenizer adds by itself (its post-processor) is left as the model was trained.

    Args:
        tokenizer: the tokenizer to fix (changed in place and returned).
        alternative_bos_token: the BOS to use where BOS equals EOS (the chapter's ``<|im_start|>``).
        alternative_unk_token: the UNK to use where UNK equals EOS.
        pad_token: use this PAD instead of choosing one (must not be EOS).
        unk_token: set this UNK (also when there was none).
        extra_special_tokens: tokens to add as extra special tokens.
        special_tokens: the chapter's name for ``extra_special_tokens`` (both may be given).
        tokens: ordinary tokens to add.

    Returns:
        The same tokenizer.

    Raises:
        FormatKitValueError: the tokenizer has no EOS (or one outside its vocabulary), or a token you chose is EOS.
        FormatKitTypeError: ``tokenizer`` is not a tokenizer, or a token list is a plain string.

    Example:
        >>> from trl_formatkit._toy import toy_tokenizer
        >>> tok = fix_special_tokens(toy_tokenizer(pad_token="</s>"))
        >>> tok.pad_token, tok.pad_token_id, tok.eos_token
        ('<unk>', 0, '</s>')
        >>> gpt2_like = toy_tokenizer(bos_token="</s>", unk_token=None, added_tokens=["<|reserved_0|>"])
        >>> n = len(gpt2_like)
        >>> fix_special_tokens(gpt2_like).pad_token, gpt2_like.bos_token, len(gpt2_like) - n
        ('<|reserved_0|>', '<|im_start|>', 1)
    """
    _require_tokenizer(tokenizer)
    lists = {"extra_special_tokens": extra_special_tokens, "special_tokens": special_tokens, "tokens": tokens}
    for name, value in lists.items():
        if isinstance(value, str):
            raise FormatKitTypeError(f"{name} must be a list of strings, got the string {value!r}; use [{value!r}]")
    plan = _plan_fix(
        tokenizer,
        alternative_bos_token=alternative_bos_token,
        alternative_unk_token=alternative_unk_token,
        pad_token=pad_token,
        unk_token=unk_token,
    )
    start = len(tokenizer)
    named = {name: new for name, (_, new) in plan.changes.items() if new is not None}
    extras = list(dict.fromkeys([*(extra_special_tokens or ()), *(special_tokens or ())]))
    extras = [t for t in extras if t not in _extra_special_tokens(tokenizer)]
    _add_special_tokens(tokenizer, named, extras)
    if "bos_token" in plan.changes and plan.bos is None:
        tokenizer.bos_token = None
    if tokens:
        tokenizer.add_tokens(list(tokens))
    _record_new_ids(tokenizer, start)
    return tokenizer


# --------------------------------------------------------------------------------------------------------------
# safe tokenizer
# --------------------------------------------------------------------------------------------------------------


class SafeSpecialTokensMixin:
    """A tokenizer mixin that refuses to make PAD the EOS token, with ``.audit()`` and ``.fix()`` shortcuts.

    ``tokenizer.pad_token = tokenizer.eos_token`` (and ``pad_token_id = eos_token_id``,
    ``add_special_tokens({"pad_token": eos})``, or an EOS set to the PAD) raises
    :class:`~trl_formatkit.errors.FormatKitValueError` naming the token to use instead. ``save_pretrained``
    writes the plain tokenizer class, so the folder loads with ``AutoTokenizer.from_pretrained`` anywhere, fixes
    included. Use :func:`safe_tokenizer` to make an existing tokenizer safe, or put the mixin first in your own
    class: ``class MyTokenizer(SafeSpecialTokensMixin, PreTrainedTokenizerFast): ...``.

    Example:
        >>> from trl_formatkit._toy import toy_tokenizer
        >>> tok = safe_tokenizer(toy_tokenizer())
        >>> tok.pad_token = tok.eos_token
        Traceback (most recent call last):
        ...
        trl_formatkit.errors.FormatKitValueError: refusing pad_token = '</s>': ...
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "_formatkit_guard", True)

    def __setattr__(self, key: str, value: Any) -> None:
        if key in ("pad_token", "pad_token_id", "eos_token", "eos_token_id") and value is not None:
            self._formatkit_refuse_pad_eos(key, value)
        super().__setattr__(key, value)

    def _formatkit_refuse_pad_eos(self, key: str, value: Any) -> None:
        if not self.__dict__.get("_formatkit_guard", False):
            return  # still inside __init__ / from_pretrained: loading is never refused (audit() reports it)
        as_token = (
            self.convert_ids_to_tokens(int(value)) if key.endswith("_id") else str(value)  # type: ignore[attr-defined]
        )
        if key.startswith("pad"):
            other = _tok(self.eos_token)  # type: ignore[attr-defined]
            if other is None or as_token != other:
                return
        else:
            other = _tok(self.pad_token)  # type: ignore[attr-defined]
            current = _tok(self.eos_token)  # type: ignore[attr-defined]
            if other is None or as_token != other or as_token == current:
                return
        try:
            vocab = _Vocab(self)
            unk = _tok(self.unk_token)  # type: ignore[attr-defined]
            candidate, reason = _pad_candidate(self, vocab, unk=unk, eos=as_token)
            where = f"id {vocab[candidate]}" if candidate in vocab else "a new token"
            instead = f"tokenizer.pad_token = {candidate!r} ({reason}, {where})"
        except Exception:  # never let the advice hide the refusal
            instead = "fix_special_tokens(tokenizer)"
        if key.startswith("pad"):
            what = f"PAD would be the EOS token {as_token!r}"
            advice = f"Use {instead}, or call tokenizer.fix() (fix_special_tokens)"
        else:
            what = f"EOS would be the PAD token {as_token!r}"
            advice = "Change the PAD first (tokenizer.fix() picks one), or keep this EOS"
        raise FormatKitValueError(
            f"refusing {key} = {str(value)!r}: {what}, and a collator that masks the pad id would never train the "
            f"model to stop. {advice}"
        )

    def audit(self, model: Any = None, **kwargs: Any) -> AuditReport:
        """``audit_tokenizer(self, model, **kwargs)``."""
        return audit_tokenizer(self, model, **kwargs)

    def fix(self, **kwargs: Any) -> Any:
        """``fix_special_tokens(self, **kwargs)``; returns self."""
        return fix_special_tokens(self, **kwargs)

    def save_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        # tokenizer_config.json names the class to load: write the plain class, not the safe one
        cls = type(self)
        plain = _plain_class(cls)
        object.__setattr__(self, "__class__", plain)
        try:
            return plain.save_pretrained(self, *args, **kwargs)
        finally:
            object.__setattr__(self, "__class__", cls)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # pickling (datasets.map with num_proc, deepcopy) rebuilds the plain tokenizer, then makes it safe again
        cls = type(self)
        if not getattr(cls, "_formatkit_dynamic", False):
            return super().__reduce_ex__(protocol)
        plain = _plain_class(cls)
        object.__setattr__(self, "__class__", plain)
        try:
            reduced = self.__reduce_ex__(protocol)
        finally:
            object.__setattr__(self, "__class__", cls)
        return (_rebuild_safe, (reduced[0], reduced[1]), *reduced[2:])


_SAFE_CLASSES: dict[type, type] = {}


def _plain_class(cls: type) -> type:
    for base in cls.__mro__[1:]:
        if not issubclass(base, SafeSpecialTokensMixin):
            return base
    raise FormatKitTypeError(f"{cls.__name__} has no tokenizer class under SafeSpecialTokensMixin")


def _safe_class(plain: type) -> type:
    cls = _SAFE_CLASSES.get(plain)
    if cls is None:
        cls = type(
            f"Safe{plain.__name__}",
            (SafeSpecialTokensMixin, plain),
            {"__module__": __name__, "_formatkit_dynamic": True, "__doc__": plain.__doc__},
        )
        _SAFE_CLASSES[plain] = cls
    return cls


def _rebuild_safe(func: Any, args: Any) -> Any:
    obj = func(*args)
    object.__setattr__(obj, "__class__", _safe_class(type(obj)))
    return obj


def safe_tokenizer(tokenizer: Any) -> Any:
    """Make an existing tokenizer instance refuse PAD = EOS (any tokenizer class), in place.

    The instance's class becomes a subclass of its class and :class:`SafeSpecialTokensMixin`, so
    ``isinstance(tokenizer, OriginalClass)`` still holds, everything else behaves the same, and
    ``save_pretrained`` writes the original class name (plain ``AutoTokenizer`` loads the folder).

    Args:
        tokenizer: a Hugging Face tokenizer instance.

    Returns:
        The same object, now safe (calling it twice is harmless).

    Raises:
        FormatKitTypeError: ``tokenizer`` is not a tokenizer instance.

    Example:
        >>> from trl_formatkit._toy import toy_tokenizer
        >>> tok = safe_tokenizer(toy_tokenizer(pad_token="</s>"))   # loading is never refused
        >>> tok.audit().codes[:1]
        ['pad-equals-eos']
        >>> tok.fix().pad_token
        '<unk>'
    """
    _require_tokenizer(tokenizer)
    if isinstance(tokenizer, type):
        raise FormatKitTypeError(
            "safe_tokenizer() takes a tokenizer instance, not a class; for a class write "
            "class MyTokenizer(SafeSpecialTokensMixin, TheClass): ..."
        )
    if not isinstance(tokenizer, SafeSpecialTokensMixin):
        object.__setattr__(tokenizer, "__class__", _safe_class(type(tokenizer)))
    object.__setattr__(tokenizer, "_formatkit_guard", True)
    return tokenizer


# --------------------------------------------------------------------------------------------------------------
# chat templates
# --------------------------------------------------------------------------------------------------------------


def _jinja_literal(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _chatml(bos: str, eos: str, *, generation_markers: bool) -> str:
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


def _zephyr(generation_markers: bool) -> str:
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


#: Named templates for :func:`add_chat_template`: name -> what it is.
CHAT_TEMPLATES: dict[str, str] = {
    "chatml-bos-eos": "ChatML built from the tokenizer's own BOS/EOS, as in the book chapter (the default)",
    "chatml": "ChatML with <|im_start|>/<|im_end|> (they must be in the vocabulary; setup_chat_format adds them)",
    "zephyr": "<|user|>/<|assistant|> role lines, each message ended by the EOS token",
}


def _named_template(tokenizer: Any, name: str, generation_markers: bool) -> str:
    vocab = _Vocab(tokenizer)
    eos = _tok(tokenizer.eos_token)
    if eos is None:
        raise FormatKitValueError(
            f"tokenizer {_name(tokenizer)!r} has no EOS token, so a chat template could not end a turn; set one "
            "(tokenizer.add_special_tokens({'eos_token': ...})) or call setup_chat_format(model, tokenizer)"
        )
    if name == "chatml-bos-eos":
        bos = _tok(tokenizer.bos_token)
        if bos is None or bos == eos:
            raise FormatKitValueError(
                f"the chapter's ChatML opens each turn with BOS, but BOS is {bos!r}"
                f"{' (the EOS token)' if bos is not None else ''}; call fix_special_tokens(tokenizer) first (BOS "
                "becomes '<|im_start|>'), or use add_chat_template(tokenizer, 'zephyr')"
            )
        return _chatml(bos, eos, generation_markers=generation_markers)
    if name == "chatml":
        missing = [t for t in ("<|im_start|>", "<|im_end|>") if t not in vocab]
        if missing:
            raise FormatKitValueError(
                f"template 'chatml' needs {missing} in the vocabulary; use setup_chat_format(model, tokenizer), "
                "which adds them and resizes the model, or add_chat_template(tokenizer) for the chapter's ChatML"
            )
        return _chatml("<|im_start|>", "<|im_end|>", generation_markers=generation_markers)
    if name == "zephyr":
        return _zephyr(generation_markers)
    raise AssertionError(name)  # pragma: no cover - names are checked by the caller


def _check_template_renders(tokenizer: Any, template: str) -> None:
    try:
        for messages, prompt in (
            (_SAMPLE_CONVERSATION, False),
            (_SAMPLE_CONVERSATION[:2], False),
            (_SAMPLE_CONVERSATION[:1], True),
        ):
            _render(tokenizer, messages, template=template, add_generation_prompt=prompt)
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
    and the stop; the rendered text is the same either way. Call :func:`fix_special_tokens` first when BOS
    equals EOS. Where the tokenizer adds BOS by itself (Llama), rendered text starts with BOS already: tokenize
    it with ``add_special_tokens=False`` (:func:`audit_tokenizer` reports this as ``double-bos``), or use
    ``apply_chat_template(..., tokenize=True)``.

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
    _require_tokenizer(tokenizer)
    if template is None:
        template = "chatml-bos-eos"
    if not isinstance(template, str):
        raise FormatKitTypeError(f"template must be a name or Jinja source (str), got {type(template).__name__}")
    if "{%" in template or "{{" in template:
        source = template
    elif template in CHAT_TEMPLATES:
        source = _named_template(tokenizer, template, generation_markers)
    else:
        import difflib

        close = difflib.get_close_matches(template, CHAT_TEMPLATES, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise FormatKitKeyError(
            f"unknown chat template {template!r}.{hint} Known: {sorted(CHAT_TEMPLATES)}; or pass Jinja source "
            "(a string with {% ... %} / {{ ... }})"
        )
    _check_template_renders(tokenizer, source)
    tokenizer.chat_template = source
    return tokenizer


# --------------------------------------------------------------------------------------------------------------
# model side
# --------------------------------------------------------------------------------------------------------------


def resize_embeddings(
    model: Any, tokenizer: Any, *, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
) -> list[int]:
    """Grow the embeddings only if the tokenizer outgrew them, and sync the model's token ids: ``modify_model``.

    - Resizes only when ``len(tokenizer)`` exceeds the embedding rows; never shrinks (empty slots stay).
    - The new size is a multiple of ``pad_to_multiple_of``, by default the largest power of two dividing the
      current size (32000 rows -> multiples of 256: a 32011-token tokenizer gives 32256 rows).
    - New rows are drawn around the mean of the old ones (transformers' ``mean_resizing``), so new tokens start
      as "an average token", not noise.
    - ``config`` and ``generation_config`` get the tokenizer's PAD, BOS and EOS; ``generation_config`` keeps its
      other EOS ids (minus the PAD) and gains the chat template's end-of-turn token.
    - Works through PEFT wrappers and on 4-bit/8-bit (bitsandbytes) models, whose embeddings are not quantised.

    Args:
        model: a transformers model, PEFT-wrapped or quantised.
        tokenizer: its (fixed) tokenizer.
        pad_to_multiple_of: the multiple to round the new size up to (default: see above).
        mean_resizing: initialise new rows from the old rows' mean and covariance (else transformers' default).

    Returns:
        Sorted ids whose embedding rows are new and untrained: the rows this call added that the tokenizer uses,
        plus tokens :func:`fix_special_tokens` / :func:`setup_chat_format` added into empty slots. Pass them to
        :func:`new_token_lora_kwargs`.

    Raises:
        FormatKitTypeError: the model has no input embeddings, or they are quantised or wrapped by PEFT's
            ``modules_to_save`` / ``trainable_token_indices``.
        FormatKitValueError: ``pad_to_multiple_of`` is not a positive integer.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from trl_formatkit._toy import toy_tokenizer
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=24, hidden_size=8, intermediate_size=16,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        >>> tok = fix_special_tokens(toy_tokenizer(bos_token="</s>", pad_token="</s>", unk_token=None))
        >>> resize_embeddings(model, tok), model.get_input_embeddings().num_embeddings  # fits the empty slots
        ([21, 22], 24)
        >>> tok = fix_special_tokens(tok, extra_special_tokens=["<tool>", "</tool>"])   # 25 tokens now
        >>> resize_embeddings(model, tok), model.get_input_embeddings().num_embeddings  # 24 = 8 * 3 -> 32
        ([21, 22, 23, 24], 32)
        >>> model.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
        True
    """
    _require_tokenizer(tokenizer)
    if pad_to_multiple_of is not None and (
        isinstance(pad_to_multiple_of, bool) or not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1
    ):
        raise FormatKitValueError(f"pad_to_multiple_of must be a positive int or None, got {pad_to_multiple_of!r}")
    embedding, _ = _check_resizable(model)
    old_rows = _num_rows(embedding)
    size = len(tokenizer)
    if size > old_rows:
        multiple = pad_to_multiple_of or (old_rows & -old_rows)
        model.resize_token_embeddings(size, pad_to_multiple_of=multiple, mean_resizing=mean_resizing)
    _sync_token_ids(model, tokenizer)
    recorded = {i for i in getattr(tokenizer, _NEW_IDS_ATTR, ()) or () if i < size}
    return sorted(set(range(old_rows, size)) | recorded)


def new_token_lora_kwargs(model: Any, token_ids: Iterable[int]) -> dict[str, Any]:
    """The ``LoraConfig`` arguments that train the embedding rows of new tokens (LoRA alone never does).

    With peft >= 0.15, ``trainable_token_indices`` trains just those rows of the input embedding and, where the
    output layer is not tied to it, of ``lm_head`` too (a few KB instead of the whole matrix). Where that cannot
    work (older peft, a layer that is not ``nn.Embedding`` / ``nn.Linear``, a quantised ``lm_head``), it falls back
    to ``modules_to_save`` with the embedding (and ``lm_head``), which trains and saves them whole.

    Args:
        model: the model, after :func:`resize_embeddings` (plain, not yet wrapped by ``get_peft_model``).
        token_ids: the new ids, e.g. what :func:`resize_embeddings` returned.

    Returns:
        A dict to unpack into ``LoraConfig(...)``; empty when there are no new ids.

    Raises:
        FormatKitTypeError: the model has no input embeddings.
        FormatKitValueError: an id is negative or past the embedding rows (resize first).
        ImportError: peft is not installed (``pip install 'trl-formatkit[peft]'``).

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False))
        >>> new_token_lora_kwargs(model, [30, 31])
        {'trainable_token_indices': {'embed_tokens': [30, 31], 'lm_head': [30, 31]}}
    """
    ids = sorted({int(i) for i in token_ids})
    if not ids:
        return {}
    try:
        import peft
    except ImportError as error:  # pragma: no cover - peft is installed in development
        raise ImportError(
            "new_token_lora_kwargs needs peft: pip install 'trl-formatkit[peft]' (or 'trl-formatkit[qlora]')"
        ) from error
    import dataclasses

    import torch

    embedding = _input_embeddings(model)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    rows = _num_rows(embedding)
    bad = [i for i in ids if i < 0 or i >= rows]
    if bad:
        raise FormatKitValueError(
            f"token ids {bad[:5]} lie outside the embedding matrix (0..{rows - 1}); call "
            "resize_embeddings(model, tokenizer) first and pass the ids it returns"
        )
    names = {id(m): n for n, m in model.named_modules()}
    embedding_name = names.get(id(embedding), "embed_tokens").rsplit(".", 1)[-1]
    tied = output is not None and getattr(output, "weight", None) is getattr(embedding, "weight", None)
    output_name = None if output is None or tied else names.get(id(output), "lm_head").rsplit(".", 1)[-1]
    supports = "trainable_token_indices" in {f.name for f in dataclasses.fields(peft.LoraConfig)}
    simple = isinstance(embedding, torch.nn.Embedding) and (
        output_name is None or (isinstance(output, torch.nn.Linear) and not _is_quantized(output))
    )
    if supports and simple:
        targets = {embedding_name: ids}
        if output_name is not None:
            targets[output_name] = ids
        return {"trainable_token_indices": targets}
    return {"modules_to_save": [embedding_name] + ([output_name] if output_name else [])}


_CHAT_FORMATS = {"chatml": ("<|im_start|>", "<|im_end|>")}


def setup_chat_format(
    model: Any,
    tokenizer: Any,
    format: Literal["chatml"] | None = "chatml",
    resize_to_multiple_of: int | None = None,
) -> tuple[Any, Any]:
    """trl's removed ``setup_chat_format``, restored without its flaws: never PAD = EOS, never shrinks.

    As trl 0.19: adds ``<|im_start|>`` (BOS) and ``<|im_end|>`` (EOS) as special tokens, sets the ChatML
    template, resizes the embeddings and syncs the model's token ids; raises if the tokenizer already has a chat
    template. Unlike trl: PAD is never EOS (an existing PAD that differs from the new EOS is kept, else UNK, else
    an unused reserved token, else the former EOS, else a new ``<pad>``); the embeddings only grow (trl resized
    OPT's 50272 rows down to 50267); the size stays a multiple of ``resize_to_multiple_of``, by default the
    largest power of two dividing the current size; the template has ``{% generation %}`` markers. The ids of
    the new tokens: ``resize_embeddings(model, tokenizer)`` (a second call changes nothing else).

    Args:
        model: a transformers model (PEFT-wrapped or 4-bit is fine).
        tokenizer: its tokenizer, without a chat template.
        format: ``"chatml"`` (the only format, as in trl).
        resize_to_multiple_of: round the grown embedding size up to a multiple of this.

    Returns:
        ``(model, tokenizer)``, both changed in place.

    Raises:
        FormatKitValueError: the tokenizer already has a chat template, or ``format`` is unknown.
        FormatKitTypeError: the model has no input embeddings (checked before anything changes).

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from trl_formatkit._toy import toy_tokenizer
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=8, intermediate_size=16,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        >>> model, tok = setup_chat_format(model, toy_tokenizer())
        >>> tok.eos_token, tok.pad_token, model.get_input_embeddings().num_embeddings
        ('<|im_end|>', '<unk>', 64)
    """
    _require_tokenizer(tokenizer)
    if getattr(tokenizer, "chat_template", None) is not None:
        raise FormatKitValueError(
            "the tokenizer already has a chat template (trl's setup_chat_format refused this too); to replace it, "
            "set tokenizer.chat_template = None first, or keep it and call fix_special_tokens(tokenizer) and "
            "resize_embeddings(model, tokenizer)"
        )
    if format not in _CHAT_FORMATS:
        raise FormatKitValueError(f"format {format!r} is not available; use one of {sorted(_CHAT_FORMATS)}")
    _check_resizable(model)  # before touching the tokenizer
    bos, eos = _CHAT_FORMATS[format]
    old_eos = _tok(tokenizer.eos_token)
    start = len(tokenizer)
    _add_special_tokens(
        tokenizer,
        {"bos_token": bos, "eos_token": eos},
        [t for t in (bos, eos) if t not in _extra_special_tokens(tokenizer)],
    )
    vocab = _Vocab(tokenizer)
    unk, pad = _tok(tokenizer.unk_token), _tok(tokenizer.pad_token)
    if unk == eos:  # pragma: no cover - only with a tokenizer whose UNK was '<|im_end|>'
        unk = None
    if pad is None or pad in (eos, bos):
        pad, _ = _pad_candidate(tokenizer, vocab, unk=unk, eos=eos, also=[old_eos])
        _add_special_tokens(tokenizer, {"pad_token": pad})
    tokenizer.chat_template = _chatml(bos, eos, generation_markers=True)
    _record_new_ids(tokenizer, start)
    resize_embeddings(model, tokenizer, pad_to_multiple_of=resize_to_multiple_of)
    return model, tokenizer
