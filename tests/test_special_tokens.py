"""Tests for trl_formatkit.special_tokens.audit and .report: each check of the table, on the real tokenizers,
and the report's forms (text, HTML, JSON).

Real tokenizers come through the ``load_tokenizer`` fixture; models are tiny random-weight ones (tests/helpers.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trl_formatkit import (
    FormatKitTypeError,
    FormatKitValueError,
    add_chat_template,
    audit_tokenizer,
    fix_special_tokens,
)
from trl_formatkit._toy import toy_tokenizer
from helpers import CHAT, codes, finding, run_python_json, tiny_gpt2


# ---------------------------------------------------------------------------------------------------------------
# import hygiene
# ---------------------------------------------------------------------------------------------------------------


def test_import_and_use_do_not_load_trl_or_datasets():
    code = (
        "import json, sys\n"
        "import trl_formatkit.special_tokens as st\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('trl', 'datasets'))\n"
        "from trl_formatkit._toy import toy_tokenizer\n"
        "tok = st.fix_special_tokens(toy_tokenizer(pad_token='</s>'))\n"
        "st.add_chat_template(tok); st.audit_tokenizer(tok); str(st.audit_tokenizer(tok))\n"
        "used = sorted(m for m in sys.modules if m.split('.')[0] in ('trl', 'datasets'))\n"
        "print(json.dumps([loaded, used]))\n"
    )
    loaded, used = run_python_json(code)
    assert loaded == [], f"import trl_formatkit.special_tokens loaded {loaded}"
    assert used == [], f"auditing and fixing loaded {used}"


def test_import_does_not_load_transformers_or_torch():
    code = (
        "import json, sys\nimport trl_formatkit.special_tokens\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))))\n"
    )
    assert run_python_json(code) == []


# ---------------------------------------------------------------------------------------------------------------
# audit: each check, on the real tokenizers
# ---------------------------------------------------------------------------------------------------------------


def test_phi3_pad_equals_eos_is_found_and_the_fix_names_unk(load_tokenizer):
    tok = load_tokenizer("phi-3-mini")
    report = audit_tokenizer(tok)
    assert codes(report) == ["pad-equals-eos"]
    f = report.problems[0]
    assert f.values == {"pad_token": "<|endoftext|>", "pad_token_id": 32000, "eos_token_id": 32000}
    assert "DataCollatorForLanguageModeling" in f.message and "-100" in f.message
    assert f.fix == "fix_special_tokens(tokenizer)  # pad_token: '<|endoftext|>' -> '<unk>' (id 0)"
    assert report.special_tokens["pad_token"] == ("<|endoftext|>", 32000)
    assert not report.ok and report.codes[0] == "pad-equals-eos"


def test_pad_equals_eos_really_drops_the_eos_label_and_the_fix_restores_it(load_tokenizer):
    """What the pad-equals-eos finding claims, shown with transformers' DataCollatorForLanguageModeling."""
    from transformers import DataCollatorForLanguageModeling

    tok = load_tokenizer("phi-3-mini")
    ids = tok(tok.apply_chat_template(CHAT, tokenize=False)).input_ids
    assert ids[-1] == 32000  # the template ends the conversation with EOS
    labels = DataCollatorForLanguageModeling(tok, mlm=False)([{"input_ids": ids}])["labels"][0].tolist()
    assert labels[-1] == -100  # never trained: the model never learns to stop
    fix_special_tokens(tok)
    labels = DataCollatorForLanguageModeling(tok, mlm=False)([{"input_ids": ids}])["labels"][0].tolist()
    assert labels[-1] == 32000


def test_phi3_end_of_turn_is_end_token_not_in_eos(load_tokenizer):
    """<|end|> (32007) follows every assistant answer; generation stops only on EOS 32000: a note without a model."""
    report = audit_tokenizer(load_tokenizer("phi-3-mini"))
    f = finding(report, "end-of-turn-not-eos")
    assert f.severity == "note"
    assert f.values["end_of_turn"] == "<|end|>" and f.values["id"] == 32007
    assert f.fix == "model.generation_config.eos_token_id = [32000, 32007]"
    assert "no-generation-markers" in codes(report, "note")
    assert "no-end-of-turn" not in report.codes


def test_qwen2_pad_equals_eos_and_im_end_is_the_end_of_turn(load_tokenizer):
    report = audit_tokenizer(load_tokenizer("qwen2"))
    assert codes(report) == ["pad-equals-eos"]
    assert finding(report, "end-of-turn-not-eos").values["end_of_turn"] == "<|im_end|>"
    assert "padding-right" in codes(report, "note")


def test_gpt2_pathologies(load_tokenizer):
    report = audit_tokenizer(load_tokenizer("gpt2"))
    assert codes(report) == ["pad-missing", "chat-template-missing"]
    assert "'<pad>' (new token)" in finding(report, "pad-missing").fix


@pytest.mark.parametrize("name", ["phi-3-mini", "llama-2", "gpt2", "qwen2", "llama-3"])
def test_bos_equal_to_eos_is_a_note_where_nothing_writes_bos(load_tokenizer, name):
    """gpt2 and qwen2 ship BOS == EOS, but neither their template nor their post-processor writes BOS: the token
    never reaches the model, so it breaks nothing (the audit used to fail both on it)."""
    tok = load_tokenizer(name)
    report = audit_tokenizer(tok)
    assert "bos-equals-eos" not in codes(report)
    if name in ("gpt2", "qwen2"):
        f = finding(report, "bos-equals-eos")
        assert f.severity == "note" and "nothing writes BOS" in f.message and f.values["written_by"] == []
        assert tok(tok.apply_chat_template(CHAT, tokenize=False) if tok.chat_template else "hi").input_ids[0] != (
            tok.bos_token_id
        )


def test_bos_equal_to_eos_that_is_written_says_so(load_tokenizer):
    tok = load_tokenizer("qwen2")
    tok.chat_template = "{{ bos_token }}" + tok.chat_template
    f = finding(audit_tokenizer(tok), "bos-equals-eos")
    assert f.values["written_by"] == ["the chat template"] and "every sample starts with EOS" in f.message
    assert "bos_token: '<|endoftext|>' -> '<|im_start|>'" in f.fix


def test_llama3_pad_missing_fix_names_a_reserved_token(load_tokenizer):
    report = audit_tokenizer(load_tokenizer("llama-3"))
    assert codes(report) == ["pad-missing", "chat-template-missing"]
    assert "'<|reserved_special_token_250|>' (id 128255)" in finding(report, "pad-missing").fix


def test_unk_equal_to_eos_is_a_problem():
    tok = toy_tokenizer(unk_token="</s>", pad_token="<pad>")
    report = audit_tokenizer(tok)
    assert "unk-equals-eos" in codes(report)
    assert "'<unk>' (new token)" in finding(report, "unk-equals-eos").fix


def test_unk_equal_to_eos_is_a_note_where_unk_cannot_happen(load_tokenizer):
    """Byte-level BPE never produces UNK, so an UNK equal to EOS never ends a text."""
    tok = load_tokenizer("gpt2")
    tok.unk_token = tok.eos_token
    assert finding(audit_tokenizer(tok), "unk-equals-eos").severity == "note"


def test_eos_missing_is_reported_and_fix_refuses_it():
    tok = toy_tokenizer(eos_token=None, pad_token="<pad>")
    assert codes(audit_tokenizer(tok))[0] == "eos-missing"
    with pytest.raises(FormatKitValueError, match="has no EOS token") as excinfo:
        fix_special_tokens(tok)
    assert "add_special_tokens({'eos_token'" in str(excinfo.value)
    with pytest.raises(FormatKitValueError, match="no EOS"):
        add_chat_template(tok, "zephyr")


def test_special_token_outside_the_vocabulary(load_tokenizer):
    tok = load_tokenizer("llama-2")
    tok.pad_token = "<pad>"  # set but never added: encodes to UNK
    report = audit_tokenizer(tok)
    f = finding(report, "token-not-in-vocab")
    assert f.values == {"pad_token": "<pad>"}
    assert "add_special_tokens({'pad_token': '<pad>'})" in f.fix


def test_double_bos_when_template_writes_bos_and_tokenizer_adds_one(load_tokenizer):
    tok = load_tokenizer("llama-2")  # adds <s> by itself
    tok.chat_template = (
        "{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}{{ '[INST] ' + m['content'] + ' [/INST]' }}"
        "{% else %}{{ ' ' + m['content'] + ' ' + eos_token }}{% endif %}{% endfor %}"
    )
    report = audit_tokenizer(tok)
    assert "double-bos" in codes(report)
    assert "add_special_tokens=False" in finding(report, "double-bos").fix
    # the same template on a tokenizer that does not add BOS is fine
    tok2 = load_tokenizer("phi-3-mini")
    tok2.chat_template = tok.chat_template
    assert "double-bos" not in audit_tokenizer(tok2).codes


def test_template_without_end_of_turn(load_tokenizer):
    tok = fix_special_tokens(load_tokenizer("llama-2"))
    tok.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    report = audit_tokenizer(tok)
    assert codes(report) == ["no-end-of-turn"]
    assert finding(report, "no-end-of-turn").values == {"after_answer": "\n"}


def test_generation_block_that_ends_before_the_eos(load_tokenizer):
    tok = fix_special_tokens(load_tokenizer("llama-2"))
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' }}{% if m['role'] == 'assistant' %}{% generation %}"
        "{{ m['content'] }}{% endgeneration %}{{ eos_token }}{% else %}{{ m['content'] + eos_token }}{% endif %}"
        "{% endfor %}"
    )
    report = audit_tokenizer(tok)
    assert codes(report) == ["end-of-turn-outside-generation"]
    assert finding(report, "end-of-turn-outside-generation").values == {"end_of_turn": "</s>", "id": 2}
    # moving the EOS inside the block clears it
    tok.chat_template = tok.chat_template.replace(
        "{{ m['content'] }}{% endgeneration %}{{ eos_token }}", "{{ m['content'] + eos_token }}{% endgeneration %}"
    )
    assert audit_tokenizer(tok).ok


def test_generation_block_that_marks_nothing(load_tokenizer):
    tok = fix_special_tokens(load_tokenizer("llama-2"))
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token }}"
        "{% if false %}{% generation %}x{% endgeneration %}{% endif %}{% endfor %}"
    )
    f = finding(audit_tokenizer(tok), "end-of-turn-outside-generation")
    assert "marks no token" in f.message


def test_end_of_turn_equal_to_pad(load_tokenizer):
    """Qwen-style: pad <|im_end|> but EOS <|endoftext|>: a pad-masking collator drops the end of every turn."""
    tok = load_tokenizer("qwen2")
    tok.pad_token = "<|im_end|>"
    report = audit_tokenizer(tok)
    f = finding(report, "end-of-turn-is-pad")
    assert f.severity == "problem" and f.values["id"] == 151645
    assert f.fix == "fix_special_tokens(tokenizer, pad_token='[PAD151935]')"
    # a pad-masking collator really drops it
    from transformers import DataCollatorForLanguageModeling

    ids = tok.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"]
    labels = DataCollatorForLanguageModeling(tok, mlm=False)([{"input_ids": ids}])["labels"][0]
    assert 151645 in ids and all(lab == -100 for i, lab in zip(ids, labels.tolist(), strict=True) if i == 151645)


def test_only_last_turn_ended_is_a_note(load_tokenizer):
    tok = fix_special_tokens(load_tokenizer("llama-2"))
    tok.chat_template = (
        "{% for m in messages %}{{ m['role'] + ': ' + m['content'] }}{% if loop.last %}{{ eos_token }}"
        "{% else %}{{ '\n' }}{% endif %}{% endfor %}"
    )
    report = audit_tokenizer(tok)
    assert report.ok
    assert "end-of-turn-only-last" in codes(report, "note")


def test_template_that_rewrites_the_text_skips_the_end_of_turn_checks(load_tokenizer):
    tok = fix_special_tokens(load_tokenizer("llama-2"))
    tok.chat_template = "{% for m in messages %}{{ m['content'] | upper + eos_token }}{% endfor %}"
    report = audit_tokenizer(tok)
    assert finding(report, "template-rewrites-content").values == {"sample": "Santiago."}
    assert finding(report, "pad-equals-unk").values == {"pad_token": "<unk>", "pad_token_id": 0}
    assert report.ok


def test_template_that_does_not_render_is_a_problem_in_the_audit(load_tokenizer):
    tok = fix_special_tokens(load_tokenizer("llama-2"))
    tok.chat_template = "{% for m in messages %}{{ raise_exception('roles must alternate') }}{% endfor %}"
    f = finding(audit_tokenizer(tok), "chat-template-error")
    assert "roles must alternate" in f.values["error"]


def test_chapter_chatml_on_a_bos_adding_tokenizer_is_a_double_bos(load_tokenizer):
    """Llama-2 adds <s> itself; the chapter's ChatML opens turns with <s>: tokenizing rendered text doubles it."""
    tok = add_chat_template(fix_special_tokens(load_tokenizer("llama-2")))
    assert codes(audit_tokenizer(tok)) == ["double-bos"]
    text = tok.apply_chat_template(CHAT, tokenize=False)
    assert tok(text).input_ids[:2] == [1, 1]
    assert tok(text, add_special_tokens=False).input_ids[:2] != [1, 1]  # the fix the report gives
    assert tok.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"][:2] != [1, 1]


def test_padding_side_is_a_problem_only_for_generation(load_tokenizer):
    tok = fix_special_tokens(load_tokenizer("qwen2"))
    assert audit_tokenizer(tok).ok
    assert "padding-right" in codes(audit_tokenizer(tok), "note")
    generation = audit_tokenizer(tok, purpose="generation")
    assert codes(generation) == ["padding-right"] and generation.purpose == "generation"
    assert finding(generation, "padding-right").fix == "tokenizer.padding_side = 'left'"
    tok.padding_side = "left"
    assert audit_tokenizer(tok, purpose="generation").ok
    with pytest.raises(FormatKitValueError, match="purpose='inference' is not allowed"):
        audit_tokenizer(tok, purpose="inference")


def test_audit_rejects_what_is_not_a_tokenizer():
    with pytest.raises(FormatKitTypeError, match="expected a Hugging Face tokenizer"):
        audit_tokenizer("microsoft/phi-3-mini-4k-instruct")


def test_audit_does_not_change_the_tokenizer(load_tokenizer):
    tok = load_tokenizer("gpt2")
    before = (dict(tok.special_tokens_map), len(tok), tok.chat_template)
    audit_tokenizer(tok)
    assert (dict(tok.special_tokens_map), len(tok), tok.chat_template) == before


# ---------------------------------------------------------------------------------------------------------------
# the report's forms
# ---------------------------------------------------------------------------------------------------------------


def test_report_prints_as_a_table_and_renders_html(load_tokenizer):
    report = audit_tokenizer(load_tokenizer("phi-3-mini"))
    text = str(report)
    for expected in ("special tokens of phi-3-mini", "pad_token", "'<|endoftext|>'", "32000", "1 problem(s)",
                     "pad-equals-eos", "fix_special_tokens(tokenizer)"):  # fmt: skip
        assert expected in text, expected
    assert "\x1b[" not in text  # plain text, no terminal colour codes
    page = report._repr_html_()
    assert page.startswith("<div") and "<table>" in page and "pad-equals-eos" in page
    assert "&lt;|endoftext|&gt;" in page and "<|endoftext|>" not in page  # escaped
    assert repr(report) == (
        "AuditReport(name='phi-3-mini', problems=['pad-equals-eos'], "
        "notes=['no-generation-markers', 'end-of-turn-not-eos'])"
    )
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(report)
    assert "pad-equals-eos" in console.export_text()
    data = report.to_dict()
    assert json.loads(json.dumps(data))["problems"][0]["code"] == "pad-equals-eos"


def test_report_does_not_break_words_at_80_columns(load_tokenizer):
    """A table column used to fold 'DataCollatorForLanguageModeling' into 'DataCollatorF / orLanguageMode / ling'."""
    from rich.console import Console

    console = Console(record=True, width=80, color_system=None)
    console.print(audit_tokenizer(load_tokenizer("phi-3-mini")))
    text = console.export_text()
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "(DataCollatorForLanguageModeling)" in text
    assert "problem (breaks training)  pad-equals-eos" in text and "note (worth knowing)" in text


def test_report_shows_markup_from_data_as_text(load_tokenizer):
    """A special token such as '[/PAD]' used to raise rich.errors.MarkupError in str(report)."""
    tok = load_tokenizer("llama-2")
    tok.add_special_tokens({"pad_token": "[/PAD]"})
    tok.name_or_path = "[red]x"
    report = audit_tokenizer(tok)
    text = str(report)
    assert "'[/PAD]'" in text and "special tokens of [red]x" in text


def test_to_dict_is_json_with_a_severity_per_finding(load_tokenizer):
    report = audit_tokenizer(load_tokenizer("gpt2"), tiny_gpt2(50368))
    data = json.loads(json.dumps(report.to_dict()))
    assert set(data) == {"name", "purpose", "ok", "special_tokens", "problems", "notes"}
    assert data["ok"] is False and data["purpose"] == "training"
    for severity in ("problems", "notes"):
        for item in data[severity]:
            assert set(item) == {"code", "severity", "message", "values", "fix"}
            assert item["severity"] == severity[:-1]
    assert [f["code"] for f in data["problems"]] == report.codes[: len(report.problems)]


def test_the_table_is_the_docstring_and_each_check_is_tested():
    """Every code is declared once in CHECKS, listed in audit_tokenizer's docstring, and found by a test here."""
    from trl_formatkit.special_tokens import CHECKS

    table = [check.code for check in CHECKS]
    assert len(table) == len(set(table))
    for check in CHECKS:
        assert f"``{check.code}`` ({check.severity}" in audit_tokenizer.__doc__
    here = Path(__file__).parent
    tested = "".join(p.read_text() for p in here.glob("test_special_tokens*.py"))
    untested = [code for code in table if f'"{code}"' not in tested]
    assert untested == []


def test_raise_for_problems(load_tokenizer):
    with pytest.raises(FormatKitValueError, match=r"1 special-token problem\(s\):\n- \[pad-equals-eos\]"):
        audit_tokenizer(load_tokenizer("phi-3-mini")).raise_for_problems()
    fixed = fix_special_tokens(load_tokenizer("phi-3-mini"))
    report = audit_tokenizer(fixed)
    assert report.raise_for_problems() is report


def test_clean_report_says_so(load_tokenizer):
    report = audit_tokenizer(fix_special_tokens(load_tokenizer("qwen2")))
    assert "no problems" in str(report) and "no problems" in report._repr_html_()
