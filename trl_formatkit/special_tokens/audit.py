""":func:`audit_tokenizer`: a table of small checks (``CHECKS``), each declaring its code, severity and fix once.

A check reads an :class:`AuditContext` (the tokenizer's special tokens, the fix plan, what the chat template writes,
the model) and yields :class:`Hit` s: the message and the values of one finding, and the words that fill the fix.
The docstring of :func:`audit_tokenizer` and the tests read the table. A new check is a function and a row here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from ..errors import FormatKitValueError
from .embeddings import eos_list, input_embeddings, model_configs, num_rows
from .fix import Plan, plan_fix
from .probe import SAMPLE_CONVERSATION, TemplateFacts, analyse_template, bos_writers
from .report import AuditFinding, AuditReport, Purpose, Severity
from .vocab import SPECIAL_NAMES, Vocab, pad_candidate, require_tokenizer, tok, tokenizer_name

__all__ = ["CHECKS", "Check", "audit_tokenizer"]


@dataclass
class AuditContext:
    """What every check may read; computed once per audit."""

    tokenizer: Any
    model: Any
    purpose: Purpose
    vocab: Vocab = field(init=False)
    bos: str | None = field(init=False)
    eos: str | None = field(init=False)
    unk: str | None = field(init=False)
    pad: str | None = field(init=False)

    def __post_init__(self) -> None:
        self.vocab = Vocab(self.tokenizer)
        self.bos, self.eos, self.unk, self.pad = (tok(getattr(self.tokenizer, name)) for name in SPECIAL_NAMES)

    def id_of(self, token: str | None) -> int | None:
        return self.vocab.get(token) if token is not None else None

    @cached_property
    def plan(self) -> Plan | None:
        """The fix_special_tokens plan, to write concrete fixes (None where the fix would refuse)."""
        if self.id_of(self.eos) is None:
            return None
        try:
            return plan_fix(self.tokenizer)
        except FormatKitValueError:
            return None

    def planned(self, name: str) -> str:
        """``"  # pad_token: '</s>' -> '<unk>' (id 0)"``: what fix_special_tokens would do to ``name``, or ``""``."""
        if self.plan is None or name not in self.plan.changes:
            return ""
        old, new = self.plan.changes[name]
        where = f"id {self.vocab[new]}" if new in self.vocab else "new token"
        return f"  # {name}: {old!r} -> {new!r} ({where})"

    @cached_property
    def facts(self) -> TemplateFacts | None:
        return analyse_template(self.tokenizer)

    @property
    def template_readable(self) -> bool:
        return self.facts is not None and not self.facts.error and self.facts.located

    @property
    def end_of_turn(self) -> tuple[int, str] | None:
        """The assistant's end-of-turn token (id, string), where the template could be read and has one."""
        if not self.template_readable or self.facts.end_of_turn_id is None:  # type: ignore[union-attr]
            return None
        eot = self.facts.end_of_turn_id  # type: ignore[union-attr]
        return eot, self.tokenizer.convert_ids_to_tokens(eot)


@dataclass(frozen=True)
class Hit:
    """One finding of a check: its message, its values, and the words that fill the check's fix."""

    message: str
    values: dict[str, Any] = field(default_factory=dict)
    fix_args: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Check:
    """A row of the audit table.

    Attributes:
        code: the finding's stable code.
        severity: ``"problem"`` (breaks training or generation) or ``"note"`` (worth knowing).
        summary: one line for :func:`audit_tokenizer`'s docstring.
        fix: the fix as code, a ``str.format`` template filled from each hit's ``fix_args``.
        run: ``run(ctx)`` yields the hits.
        problem_when: for a note that breaks things in some settings: ``(test, words)``; ``test(ctx)`` true makes
            the finding a problem.
    """

    code: str
    severity: Severity
    summary: str
    fix: str
    run: Callable[[AuditContext], Iterator[Hit]]
    problem_when: tuple[Callable[[AuditContext], bool], str] | None = None

    def severity_for(self, ctx: AuditContext) -> Severity:
        if self.problem_when is not None and self.problem_when[0](ctx):
            return "problem"
        return self.severity

    def findings(self, ctx: AuditContext) -> list[AuditFinding]:
        severity = self.severity_for(ctx)
        return [
            AuditFinding(self.code, severity, hit.message, dict(hit.values), self.fix.format(**hit.fix_args))
            for hit in self.run(ctx)
        ]


# ---- special tokens ------------------------------------------------------------------------------------------


def _eos_missing(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.eos is None:
        yield Hit(
            "the tokenizer has no EOS token: nothing marks the end of a text, so nothing teaches the model to stop",
            {"eos_token": None},
        )


def _token_not_in_vocab(ctx: AuditContext) -> Iterator[Hit]:
    for name, value in (("eos_token", ctx.eos), ("bos_token", ctx.bos), ("unk_token", ctx.unk), ("pad_token", ctx.pad)):
        if value is not None and value not in ctx.vocab:
            yield Hit(
                f"{name} {value!r} is not in the vocabulary: it encodes to UNK or fails",
                {name: value},
                {"name": name, "value": value},
            )


def _pad_missing(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.eos is not None and ctx.pad is None:
        yield Hit(
            "the tokenizer has no PAD token: collators cannot pad, and trl and many scripts then set PAD = EOS, so "
            "the model never learns to stop",
            {"pad_token": None, "eos_token": ctx.eos},
            {"plan": ctx.planned("pad_token")},
        )


def _pad_equals_eos(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.eos is not None and ctx.pad == ctx.eos:
        eos_id = ctx.id_of(ctx.eos)
        yield Hit(
            f"PAD is the EOS token (id {eos_id}): a collator that masks padding by the pad id "
            "(DataCollatorForLanguageModeling) gives every EOS the label -100, so the model never learns to stop",
            {"pad_token": ctx.pad, "pad_token_id": ctx.id_of(ctx.pad), "eos_token_id": eos_id},
            {"plan": ctx.planned("pad_token")},
        )


def _pad_equals_unk(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.eos is not None and ctx.pad not in (None, ctx.eos) and ctx.pad == ctx.unk:
        yield Hit(
            "PAD is the UNK token: fine (the chapter does this); both stay distinct from EOS",
            {"pad_token": ctx.pad, "pad_token_id": ctx.id_of(ctx.pad)},
        )


def _bos_equals_eos(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.eos is None or ctx.bos != ctx.eos:
        return
    writers = bos_writers(ctx.tokenizer)
    if writers:
        fact = (
            f"{' and '.join(writers)} writes it, so every sample starts with EOS. Training still works (the EOS "
            "at the end is trained), but code that finds the end of a text by its EOS (packing, splitting, "
            "stopping criteria on the prompt) cuts at the start"
        )
    else:
        fact = (
            "nothing writes BOS (neither the chat template nor the tokenizer's post-processor), so it never "
            "reaches the model: harmless, and fix_special_tokens leaves it alone"
        )
    yield Hit(
        f"BOS is the EOS token: {fact}",
        {"bos_token": ctx.bos, "eos_token": ctx.eos, "id": ctx.id_of(ctx.eos), "written_by": writers},
        {"plan": ctx.planned("bos_token")},
    )


def _produces_unk(tokenizer: Any) -> bool:
    """Whether unusual text can encode to UNK (byte-level BPE and byte fallback never produce it)."""
    unk_id = getattr(tokenizer, "unk_token_id", None)
    if unk_id is None:
        return False
    try:
        ids = tokenizer("\u2603 \U0001f9ea \x07 \u0f3a\u0f3b zq\u00df", add_special_tokens=False)["input_ids"]
    except Exception:  # noqa: BLE001 - a tokenizer that fails on unusual text: assume it can produce UNK
        return True
    return unk_id in ids


def _unk_equals_eos(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.eos is not None and ctx.unk == ctx.eos:
        yield Hit(
            "UNK is the EOS token: every unknown character ends the text",
            {"unk_token": ctx.unk, "eos_token": ctx.eos, "id": ctx.id_of(ctx.eos)},
            {"plan": ctx.planned("unk_token")},
        )


def _padding_right(ctx: AuditContext) -> Iterator[Hit]:
    side = getattr(ctx.tokenizer, "padding_side", "right")
    if side != "right":
        return
    if ctx.purpose == "generation":
        message = "right padding for generation: the model continues after the pad tokens of shorter prompts"
    else:
        message = (
            "right padding is fine for training (labels of padding are -100); use left padding for batched "
            "generation"
        )
    yield Hit(message, {"padding_side": side})


# ---- chat template -------------------------------------------------------------------------------------------


def _chat_template_missing(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.facts is None:
        yield Hit(
            "the tokenizer has no chat template: conversational datasets and apply_chat_template fail "
            "(ignore this if you train on plain text with your own formatting_func)",
            {"chat_template": None},
        )


def _chat_template_error(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.facts is not None and ctx.facts.error:
        yield Hit("the chat template does not render a plain user/assistant conversation", {"error": ctx.facts.error})


def _template_rewrites_content(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.facts is not None and not ctx.facts.error and not ctx.facts.located:
        yield Hit(
            "the chat template changes the message text, so the end-of-turn checks were skipped",
            {"sample": SAMPLE_CONVERSATION[-1]["content"]},
        )


def _double_bos(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.template_readable and ctx.facts.double_bos:  # type: ignore[union-attr]
        yield Hit(
            "the chat template writes BOS and the tokenizer adds another one when the rendered text is tokenized "
            "(a formatting_func or a text column: tokenizer(text)): every sample starts with two BOS tokens; "
            "apply_chat_template(tokenize=True) is not affected",
            {"bos_token": ctx.bos, "bos_token_id": ctx.tokenizer.bos_token_id},
        )


def _no_end_of_turn(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.template_readable and ctx.end_of_turn is None:
        tail = ctx.facts.tail_ids  # type: ignore[union-attr]
        yield Hit(
            "no special token follows the assistant's answer: the model has no token to stop on (the template "
            "drops EOS)",
            {"after_answer": ctx.tokenizer.decode(tail) if tail else ""},
        )


def _end_of_turn_is_pad(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.end_of_turn is None:
        return
    eot, eot_token = ctx.end_of_turn
    if eot == ctx.id_of(ctx.pad) and ctx.pad != ctx.eos:
        unk = None if ctx.unk == eot_token else ctx.unk
        yield Hit(
            f"assistant turns end with {eot_token!r}, which is the PAD token: a collator that masks the pad id drops "
            "it, so the model never learns to end a turn",
            {"end_of_turn": eot_token, "id": eot, "pad_token": ctx.pad},
            {"pad": pad_candidate(ctx.tokenizer, ctx.vocab, unk=unk, eos=ctx.eos or "")[0]},
        )


def _end_of_turn_outside_generation(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.end_of_turn is None or ctx.facts.end_of_turn_in_generation is not False:  # type: ignore[union-attr]
        return
    eot, eot_token = ctx.end_of_turn
    message = (
        "the {% generation %} block marks no token"
        if ctx.facts.generation_marks_nothing  # type: ignore[union-attr]
        else f"the {{% generation %}} block ends before {eot_token!r}: assistant-only masks (assistant_only_loss, "
        "return_assistant_tokens_mask) never train the model to end a turn"
    )
    yield Hit(message, {"end_of_turn": eot_token, "id": eot})


def _end_of_turn_only_last(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.end_of_turn is not None and ctx.facts.mid_turn_has_end is False:  # type: ignore[union-attr]
        eot, eot_token = ctx.end_of_turn
        yield Hit(
            f"only the last assistant turn ends with {eot_token!r}; earlier turns teach no stop",
            {"end_of_turn": eot_token, "id": eot},
        )


def _no_generation_markers(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.end_of_turn is not None and not ctx.facts.has_generation_markers:  # type: ignore[union-attr]
        yield Hit(
            "the template has no {% generation %} markers: assistant_only_loss and return_assistant_tokens_mask "
            "cannot find the answers; train completions with DataCollatorForCompletionOnlyLM and a response "
            "template instead",
        )


def _end_of_turn_not_eos(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.end_of_turn is None:
        return
    eot, eot_token = ctx.end_of_turn
    eos_id = ctx.id_of(ctx.eos)
    generation_eos = set(eos_list(getattr(getattr(ctx.model, "generation_config", None), "eos_token_id", None)))
    if eot in {eos_id} | generation_eos:
        return
    values: dict[str, Any] = {"end_of_turn": eot_token, "id": eot, "eos_token_id": eos_id}
    if ctx.model is not None:
        values["generation_config.eos_token_id"] = sorted(generation_eos)
    yield Hit(
        f"assistant turns end with {eot_token!r} but generation stops on EOS ({ctx.eos!r}): without {eot} in "
        "generation_config.eos_token_id the model talks on past the end of its turn",
        values,
        {
            "ids": [i for i in [eos_id, eot] if i is not None],
            "note": "  # resize_embeddings does this" if ctx.model is not None else "",
        },
    )


# ---- model ---------------------------------------------------------------------------------------------------


def _vocab_exceeds_embeddings(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.model is None:
        return
    rows, size = num_rows(input_embeddings(ctx.model)), len(ctx.tokenizer)
    if size > rows:
        yield Hit(
            f"the tokenizer has {size} tokens but the embedding matrix {rows} rows: ids {rows}..{size - 1} index "
            "past it (a CUDA device-side assert, or an IndexError on CPU)",
            {"len(tokenizer)": size, "embedding_rows": rows},
            {"multiple": rows & -rows},
        )
    output = ctx.model.get_output_embeddings() if hasattr(ctx.model, "get_output_embeddings") else None
    if output is not None and hasattr(output, "weight") and num_rows(output) < size:
        yield Hit(
            f"the output layer has {num_rows(output)} rows for {size} tokens",
            {"len(tokenizer)": size, "lm_head_rows": num_rows(output)},
            {"multiple": num_rows(output) & -num_rows(output)},
        )


def _empty_embedding_slots(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.model is None:
        return
    rows, size = num_rows(input_embeddings(ctx.model)), len(ctx.tokenizer)
    if size < rows:
        yield Hit(
            f"{rows - size} embedding rows are not used by the tokenizer: new tokens fit there without resizing "
            "(their rows are untrained: train them, see new_token_lora_kwargs)",
            {"len(tokenizer)": size, "embedding_rows": rows},
        )


def _embedding_padding_idx(ctx: AuditContext) -> Iterator[Hit]:
    padding_idx = None if ctx.model is None else getattr(input_embeddings(ctx.model), "padding_idx", None)
    if padding_idx is not None and padding_idx != ctx.tokenizer.pad_token_id:
        yield Hit(
            f"the embedding's padding_idx ({padding_idx}) is not the pad id: row {padding_idx} gets no gradient",
            {"padding_idx": padding_idx, "pad_token_id": ctx.tokenizer.pad_token_id},
        )


def _config_token_ids(ctx: AuditContext) -> Iterator[Hit]:
    if ctx.model is None:
        return
    tokenizer = ctx.tokenizer
    wanted = {"pad_token_id": tokenizer.pad_token_id, "bos_token_id": tokenizer.bos_token_id}
    where_configs = [("config", c) for c in model_configs(ctx.model)[:1]]
    where_configs.append(("generation_config", getattr(ctx.model, "generation_config", None)))
    for where, config in where_configs:
        if config is None:
            continue
        for key, value in wanted.items():
            have = getattr(config, key, None)
            if value is not None and have != value:
                yield Hit(
                    f"model.{where}.{key} is {have!r} but the tokenizer's is {value!r}",
                    {f"{where}.{key}": have, f"tokenizer.{key}": value},
                )
        have_eos = getattr(config, "eos_token_id", None)
        if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in eos_list(have_eos):
            yield Hit(
                f"model.{where}.eos_token_id is {have_eos!r}, which lacks the tokenizer's EOS "
                f"{tokenizer.eos_token_id}: generation would not stop on it",
                {f"{where}.eos_token_id": have_eos, "tokenizer.eos_token_id": tokenizer.eos_token_id},
            )


def _generation_pad_in_eos(ctx: AuditContext) -> Iterator[Hit]:
    generation_config = getattr(ctx.model, "generation_config", None) if ctx.model is not None else None
    if generation_config is None:
        return
    gen_pad = getattr(generation_config, "pad_token_id", None)
    gen_eos = eos_list(getattr(generation_config, "eos_token_id", None))
    if gen_pad is not None and gen_pad in gen_eos:
        yield Hit(
            "generation_config.pad_token_id is one of its EOS ids: padded batches look finished, and a model "
            "fine-tuned this way pads instead of stopping",
            {"pad_token_id": gen_pad, "eos_token_id": gen_eos},
        )


# ---- the table -----------------------------------------------------------------------------------------------

_FIX_PLAN = "fix_special_tokens(tokenizer){plan}"
_FIX_SYNC = "resize_embeddings(model, tokenizer)  # syncs config and generation_config"
_FIX_TEMPLATE = "add_chat_template(tokenizer)"


def _for_generation(ctx: AuditContext) -> bool:
    return ctx.purpose == "generation"


def _with_model(ctx: AuditContext) -> bool:
    return ctx.model is not None


def _unk_reachable(ctx: AuditContext) -> bool:
    return _produces_unk(ctx.tokenizer)


#: The audit, in the order findings are listed. ``problem_when`` turns a note into a problem in that setting.
CHECKS: tuple[Check, ...] = (
    Check("eos-missing", "problem", "no EOS token: nothing teaches the model to stop",
          "tokenizer.add_special_tokens({{'eos_token': '</s>'}})  # the token your model ends texts with",
          _eos_missing),
    Check("token-not-in-vocab", "problem", "a special token that is not in the vocabulary (it encodes to UNK)",
          "tokenizer.add_special_tokens({{{name!r}: {value!r}}})  # then resize_embeddings(model, tokenizer)",
          _token_not_in_vocab),
    Check("pad-missing", "problem", "no PAD (trl and many scripts then set PAD = EOS)", _FIX_PLAN, _pad_missing),
    Check("pad-equals-eos", "problem",
          "PAD == EOS: a collator that masks the pad id (transformers' DataCollatorForLanguageModeling) gives "
          "every EOS the label -100, so the model never learns to stop", _FIX_PLAN, _pad_equals_eos),
    Check("pad-equals-unk", "note", "PAD == UNK: fine, as the chapter does", "", _pad_equals_unk),
    Check("bos-equals-eos", "note",
          "BOS == EOS: harmless where nothing writes BOS (GPT-2, Qwen2); where something does, every sample "
          "starts with EOS", _FIX_PLAN, _bos_equals_eos),
    Check("unk-equals-eos", "note", "UNK == EOS: every unknown character would end the text", _FIX_PLAN,
          _unk_equals_eos, (_unk_reachable, "the tokenizer can produce UNK")),
    Check("padding-right", "note", "right padding: fine for training, wrong for batched generation",
          "tokenizer.padding_side = 'left'", _padding_right, (_for_generation, "purpose='generation'")),
    Check("chat-template-missing", "problem", "no chat template: conversational datasets fail",
          _FIX_TEMPLATE + "  # ChatML from its own BOS/EOS, as in the chapter", _chat_template_missing),
    Check("chat-template-error", "problem", "a chat template that does not render a plain user/assistant "
          "conversation", "add_chat_template(tokenizer, template=...)  # or fix the Jinja source in "
          "tokenizer.chat_template", _chat_template_error),
    Check("template-rewrites-content", "note", "the template changes the message text (end-of-turn checks "
          "skipped)", "", _template_rewrites_content),
    Check("double-bos", "problem", "the template writes BOS and the tokenizer adds another when the rendered "
          "text is tokenized", "tokenizer(text, add_special_tokens=False)  # or apply_chat_template(..., "
          "tokenize=True)", _double_bos),
    Check("no-end-of-turn", "problem", "nothing special follows the assistant's answer: no token to stop on",
          _FIX_TEMPLATE + "  # or end assistant turns with '{{{{ eos_token }}}}' in the template", _no_end_of_turn),
    Check("end-of-turn-is-pad", "problem", "the assistant's end-of-turn token is PAD: pad-masking collators "
          "drop it", "fix_special_tokens(tokenizer, pad_token={pad!r})", _end_of_turn_is_pad),
    Check("end-of-turn-outside-generation", "problem", "the {% generation %} block ends before the "
          "end-of-turn token: assistant-only masks never train it", "move {{% endgeneration %}} after the "
          "end-of-turn token, or add_chat_template(tokenizer)", _end_of_turn_outside_generation),
    Check("end-of-turn-only-last", "note", "only the last assistant turn ends with the end-of-turn token",
          _FIX_TEMPLATE, _end_of_turn_only_last),
    Check("no-generation-markers", "note", "no {% generation %} markers: assistant_only_loss cannot find "
          "answers", _FIX_TEMPLATE + "  # a template with markers", _no_generation_markers),
    Check("end-of-turn-not-eos", "note", "turns end with a token generation does not stop on",
          "model.generation_config.eos_token_id = {ids}{note}", _end_of_turn_not_eos,
          (_with_model, "a model is given")),
    Check("vocab-exceeds-embeddings", "problem", "ids past the embedding matrix (with a model)",
          "new_ids = resize_embeddings(model, tokenizer)  # grows to a multiple of {multiple}",
          _vocab_exceeds_embeddings),
    Check("empty-embedding-slots", "note", "embedding rows the tokenizer does not use (with a model)", "",
          _empty_embedding_slots),
    Check("embedding-padding-idx", "note", "the embedding's padding_idx is not the pad id (with a model)", "",
          _embedding_padding_idx),
    Check("config-token-ids", "problem", "config / generation_config ids disagree with the tokenizer (with a "
          "model)", _FIX_SYNC, _config_token_ids),
    Check("generation-pad-in-eos", "problem", "the generation pad id is one of its EOS ids (with a model)",
          "fix_special_tokens(tokenizer); resize_embeddings(model, tokenizer)", _generation_pad_in_eos),
)  # fmt: skip


def checks_doc() -> str:
    """The table as the bullet list in :func:`audit_tokenizer`'s docstring."""
    lines = []
    for check in CHECKS:
        when = f", a problem when {check.problem_when[1]}" if check.problem_when else ""
        lines.append(f"    - ``{check.code}`` ({check.severity}{when}): {check.summary}.")
    return "\n".join(lines)


def audit_tokenizer(tokenizer: Any, model: Any = None, *, purpose: Purpose = "training") -> AuditReport:
    """Check a tokenizer (and a model) for the special-token mistakes that break fine-tuning or generation.

    Problems (``report.problems``) break training or generation; notes (``report.notes``) are worth knowing and
    break nothing. The checks, in the order they are listed (``trl_formatkit.special_tokens.CHECKS``):

{checks}

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
    require_tokenizer(tokenizer)
    if purpose not in ("training", "generation"):
        raise FormatKitValueError(f"purpose={purpose!r} is not allowed; use 'training' or 'generation'")
    if model is not None:
        input_embeddings(model)  # a clear error before any check runs
    ctx = AuditContext(tokenizer, model, purpose)
    report = AuditReport(
        name=tokenizer_name(tokenizer),
        purpose=purpose,
        special_tokens={name: (value, ctx.id_of(value)) for name, value in zip(
            SPECIAL_NAMES, (ctx.bos, ctx.eos, ctx.unk, ctx.pad), strict=True)},  # fmt: skip
    )
    for check in CHECKS:
        for finding in check.findings(ctx):
            (report.problems if finding.severity == "problem" else report.notes).append(finding)
    return report


audit_tokenizer.__doc__ = (audit_tokenizer.__doc__ or "").replace("{checks}", checks_doc())
