"""Tests for trl_formatkit.special_tokens: each audit check, each fix, the safe tokenizer, templates, models.

Real tokenizers come through the ``load_tokenizer`` fixture; models are tiny random-weight ones built from
configs (hidden 32, 2 layers), never downloaded.
"""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trl_formatkit import (
    CHAT_TEMPLATES,
    AuditReport,
    FormatKitError,
    FormatKitKeyError,
    FormatKitTypeError,
    FormatKitValueError,
    SafeSpecialTokensMixin,
    add_chat_template,
    audit_tokenizer,
    fix_special_tokens,
    new_token_lora_kwargs,
    resize_embeddings,
    safe_tokenizer,
    setup_chat_format,
)
from trl_formatkit._toy import toy_tokenizer
from helpers import run_python_json

REPO_ROOT = Path(__file__).resolve().parent.parent
CHAT = [
    {"role": "user", "content": "What is the capital of Argentina?"},
    {"role": "assistant", "content": "Buenos Aires."},
]


# ---------------------------------------------------------------------------------------------------------------
# tiny models
# ---------------------------------------------------------------------------------------------------------------


def _tiny(config_cls, model_cls, vocab_size: int, **kwargs):
    """A 2-layer, hidden-32 random-weight model (no hub)."""
    torch.manual_seed(0)
    config = config_cls(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        **kwargs,
    )
    return model_cls(config)


def tiny_llama(vocab_size: int = 32000, **kwargs):
    from transformers import LlamaConfig, LlamaForCausalLM

    return _tiny(LlamaConfig, LlamaForCausalLM, vocab_size, **kwargs)


def tiny_phi3(vocab_size: int = 32000, **kwargs):
    from transformers import Phi3Config, Phi3ForCausalLM

    kwargs.setdefault("pad_token_id", None)  # Phi3Config's default 32000 lies outside a 32000-row embedding
    return _tiny(Phi3Config, Phi3ForCausalLM, vocab_size, **kwargs)


def tiny_gpt2(vocab_size: int = 50368):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=64))


def rows(model) -> int:
    return model.get_input_embeddings().weight.shape[0]


def codes(report: AuditReport, severity: str = "problem") -> list[str]:
    return [f.code for f in (report.problems if severity == "problem" else report.notes)]


def finding(report: AuditReport, code: str):
    found = [f for f in report.problems + report.notes if f.code == code]
    assert found, f"{code} not in {report.codes}"
    return found[0]


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


def test_qwen2_pad_and_bos_equal_eos_and_im_end_is_the_end_of_turn(load_tokenizer):
    report = audit_tokenizer(load_tokenizer("qwen2"))
    assert codes(report) == ["pad-equals-eos", "bos-equals-eos"]
    assert finding(report, "end-of-turn-not-eos").values["end_of_turn"] == "<|im_end|>"
    assert "padding-right" in codes(report, "note")


def test_gpt2_pathologies(load_tokenizer):
    report = audit_tokenizer(load_tokenizer("gpt2"))
    assert codes(report) == ["pad-missing", "bos-equals-eos", "chat-template-missing"]
    assert "'<pad>' (new token)" in finding(report, "pad-missing").fix
    assert "'<|im_start|>' (new token)" in finding(report, "bos-equals-eos").fix


def test_llama3_pad_missing_fix_names_a_reserved_token(load_tokenizer):
    report = audit_tokenizer(load_tokenizer("llama-3"))
    assert codes(report) == ["pad-missing", "chat-template-missing"]
    assert "'<|reserved_special_token_250|>' (id 128255)" in finding(report, "pad-missing").fix


def test_unk_equal_to_eos_is_a_problem():
    tok = toy_tokenizer(unk_token="</s>", pad_token="<pad>")
    report = audit_tokenizer(tok)
    assert "unk-equals-eos" in codes(report)
    assert "'<unk>' (new token)" in finding(report, "unk-equals-eos").fix


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


def test_raise_for_problems(load_tokenizer):
    with pytest.raises(FormatKitValueError, match=r"1 special-token problem\(s\):\n- \[pad-equals-eos\]"):
        audit_tokenizer(load_tokenizer("phi-3-mini")).raise_for_problems()
    fixed = fix_special_tokens(load_tokenizer("phi-3-mini"))
    report = audit_tokenizer(fixed)
    assert report.raise_for_problems() is report


def test_clean_report_says_so(load_tokenizer):
    report = audit_tokenizer(fix_special_tokens(load_tokenizer("qwen2")))
    assert "no problems" in str(report) and "no problems" in report._repr_html_()


# ---------------------------------------------------------------------------------------------------------------
# fix: the acceptance cases on the real tokenizers
# ---------------------------------------------------------------------------------------------------------------


def test_fix_phi3_pad_becomes_unk_as_in_the_chapter(load_tokenizer):
    tok = load_tokenizer("phi-3-mini")
    n = len(tok)
    out = fix_special_tokens(tok)
    assert out is tok
    assert (tok.pad_token, tok.pad_token_id) == ("<unk>", 0)
    assert tok.special_tokens_map == {  # the chapter's printed special_tokens_map, minus its cls/sep/mask detour
        "bos_token": "<s>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<unk>",
        "pad_token": "<unk>",
    }
    assert len(tok) == n and tok.padding_side == "left"
    assert audit_tokenizer(tok).ok


def test_fix_gpt2_all_three_distinct_from_eos(load_tokenizer):
    tok = load_tokenizer("gpt2")
    n = len(tok)
    fix_special_tokens(tok)
    eos_id = tok.eos_token_id
    assert (tok.eos_token, eos_id) == ("<|endoftext|>", 50256)  # EOS kept
    assert tok.bos_token == "<|im_start|>" and tok.bos_token_id not in (None, eos_id)
    assert tok.pad_token == "<pad>" and tok.pad_token_id not in (None, eos_id)
    assert tok.unk_token_id != eos_id  # GPT-2's byte-level BPE has no UNK: it stays None, distinct from EOS
    assert len(tok) == n + 2 == 50259  # no existing token could serve: two new ones
    assert sorted([tok.bos_token_id, tok.pad_token_id]) == [50257, 50258]
    assert audit_tokenizer(tok).codes[:1] == ["chat-template-missing"]
    # asking for an UNK gives one, distinct from EOS too
    fix_special_tokens(tok, unk_token="<unk>")
    assert tok.unk_token == "<unk>" and tok.unk_token_id not in (None, eos_id) and len(tok) == 50260


def test_fix_llama3_uses_a_reserved_token_without_growing(load_tokenizer):
    tok = load_tokenizer("llama-3")
    n = len(tok)
    fix_special_tokens(tok)
    assert len(tok) == n
    assert (tok.pad_token, tok.pad_token_id) == ("<|reserved_special_token_250|>", 128255)
    assert tok.bos_token == "<|begin_of_text|>" and tok.eos_token == "<|end_of_text|>"
    assert tok("hi").input_ids[0] == 128000  # still adds its own BOS


def test_fix_qwen2_then_audits_clean(load_tokenizer):
    tok = load_tokenizer("qwen2")
    n = len(tok)
    fix_special_tokens(tok)
    assert len(tok) == n
    assert tok.eos_token == "<|endoftext|>"
    assert tok.pad_token_id not in (None, tok.eos_token_id) and tok.bos_token_id != tok.eos_token_id
    assert tok.bos_token == "<|im_start|>" and tok.pad_token == "[PAD151935]"
    report = audit_tokenizer(tok)
    assert report.problems == [], str(report)


def test_fix_llama2_pad_is_unk(load_tokenizer):
    tok = fix_special_tokens(load_tokenizer("llama-2"))
    assert (tok.pad_token, tok.pad_token_id, len(tok)) == ("<unk>", 0, 32000)


def test_fix_is_idempotent(load_tokenizer):
    tok = fix_special_tokens(load_tokenizer("gpt2"))
    state = (dict(tok.special_tokens_map), len(tok))
    fix_special_tokens(tok)
    assert (dict(tok.special_tokens_map), len(tok)) == state


def test_fix_keeps_a_pad_that_already_differs_from_eos():
    tok = toy_tokenizer(pad_token="<pad>")
    fix_special_tokens(tok)
    assert tok.pad_token == "<pad>"


def test_fix_prefers_an_existing_pad_token_over_reserved_slots():
    tok = toy_tokenizer(unk_token=None, added_tokens=["<|reserved_0|>", "<|finetune_right_pad_id|>"])
    n = len(tok)
    fix_special_tokens(tok)
    assert tok.pad_token == "<|finetune_right_pad_id|>" and len(tok) == n


def test_fix_skips_reserved_tokens_the_template_uses():
    template = "{% for m in messages %}{{ '<|reserved_1|>' + m['content'] + eos_token }}{% endfor %}"
    tok = toy_tokenizer(unk_token=None, added_tokens=["<|reserved_0|>", "<|reserved_1|>"], chat_template=template)
    fix_special_tokens(tok)
    assert tok.pad_token == "<|reserved_0|>"


def test_fix_unk_equal_to_eos_gets_the_alternative_and_pad_follows_it():
    tok = toy_tokenizer(unk_token="</s>", bos_token="</s>", pad_token=None)
    n = len(tok)
    fix_special_tokens(tok)  # the chapter's OPT case: BOS, UNK all '</s>'
    assert tok.eos_token == "</s>"
    assert tok.bos_token == "<|im_start|>" and tok.unk_token == "<unk>" and tok.pad_token == "<unk>"
    assert len(tok) == n + 2


def test_fix_with_a_response_template_as_one_token(load_tokenizer):
    """The chapter's '##[YODA]##>' response template becomes a single, never-split token."""
    tok = load_tokenizer("llama-2")
    before = tok.encode("##[YODA]##>", add_special_tokens=False)
    assert len(before) > 1
    fix_special_tokens(tok, extra_special_tokens=["##[YODA]##>"], tokens=["hrrrm"])
    assert tok.encode("##[YODA]##>", add_special_tokens=False) == [32000]
    assert tok.convert_ids_to_tokens(32000) == "##[YODA]##>"
    assert tok.encode("hrrrm", add_special_tokens=False)[-1] == 32001
    # the chapter's keyword, and existing extra special tokens are kept, not replaced
    fix_special_tokens(tok, special_tokens=["### Assistant:"])
    assert set(tok.extra_special_tokens) >= {"##[YODA]##>", "### Assistant:"}
    assert len(tok) == 32003


def test_fix_with_explicit_pad_and_errors():
    tok = toy_tokenizer(pad_token="</s>", added_tokens=["<|reserved_0|>"])
    with pytest.raises(FormatKitValueError, match="pad_token='</s>' is the EOS token"):
        fix_special_tokens(tok, pad_token="</s>")
    with pytest.raises(FormatKitValueError, match="alternative_bos_token='</s>' is the EOS"):
        fix_special_tokens(toy_tokenizer(bos_token="</s>"), alternative_bos_token="</s>")
    with pytest.raises(FormatKitTypeError, match=r"use \['##>'\]"):
        fix_special_tokens(tok, extra_special_tokens="##>")
    fix_special_tokens(tok, pad_token="<|reserved_0|>")
    assert tok.pad_token == "<|reserved_0|>"


def test_fix_can_unset_a_bos_equal_to_eos():
    tok = fix_special_tokens(toy_tokenizer(bos_token="</s>"), alternative_bos_token=None)
    assert tok.bos_token is None and tok.eos_token == "</s>"


def test_fix_eos_not_in_vocabulary_is_an_error(load_tokenizer):
    tok = load_tokenizer("llama-2")
    tok.eos_token = "<|im_end|>"  # set, never added
    with pytest.raises(FormatKitValueError, match="not in its vocabulary"):
        fix_special_tokens(tok)


# property: whatever the starting point, the fix leaves BOS/UNK/PAD distinct from EOS and reuses what exists
_SPECIAL = st.sampled_from(["none", "own", "eos"])


@given(bos=_SPECIAL, unk=_SPECIAL, pad=st.sampled_from(["none", "own", "eos", "unk"]), reserved=st.integers(0, 2))
def test_fix_property(bos, unk, pad, reserved):
    pick = {"none": None, "eos": "</s>"}
    tok = toy_tokenizer(
        bos_token=pick.get(bos, "<s>"),
        unk_token=pick.get(unk, "<unk>"),
        pad_token=(pick.get(pad, "<pad>") if pad != "unk" else (pick.get(unk, "<unk>"))),
        added_tokens=[f"<|reserved_{i}|>" for i in range(reserved)],
    )
    vocab_before = tok.get_vocab()
    fix_special_tokens(tok)
    eos_id = tok.eos_token_id
    assert tok.eos_token == "</s>"
    assert tok.pad_token is not None and tok.pad_token_id != eos_id
    assert tok.bos_token_id != eos_id and tok.unk_token_id != eos_id
    new = set(tok.get_vocab()) - set(vocab_before)
    # a token is only new when nothing in the vocabulary could serve
    needs_pad = pad in ("none", "eos") or (pad == "unk" and unk != "own")
    expected_new = {
        "<|im_start|>": bos == "eos",
        "<unk>": unk == "eos",  # UNK must leave EOS; PAD then shares it (one new token for both)
        "<pad>": needs_pad and unk == "none" and reserved == 0,
    }
    assert new == {token for token, is_new in expected_new.items() if is_new}
    report = audit_tokenizer(tok)
    assert not {"pad-missing", "pad-equals-eos", "bos-equals-eos", "unk-equals-eos"} & set(report.codes)


# ---------------------------------------------------------------------------------------------------------------
# safe tokenizer
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["llama-3", "gpt2", "qwen2"])
def test_safe_tokenizer_refuses_pad_equal_eos(load_tokenizer, name):
    original = load_tokenizer(name)
    cls = type(original)
    tok = safe_tokenizer(original)
    assert tok is original and isinstance(tok, cls) and isinstance(tok, SafeSpecialTokensMixin)
    before = tok.pad_token
    for attempt in (
        lambda: setattr(tok, "pad_token", tok.eos_token),
        lambda: setattr(tok, "pad_token_id", tok.eos_token_id),
        lambda: tok.add_special_tokens({"pad_token": tok.eos_token}),
    ):
        with pytest.raises(FormatKitValueError, match="PAD would be the EOS token") as excinfo:
            attempt()
        assert "Use tokenizer.pad_token = " in str(excinfo.value) and "tokenizer.fix()" in str(excinfo.value)
        assert tok.pad_token == before  # nothing changed
    assert safe_tokenizer(tok) is tok and type(tok) is type(safe_tokenizer(tok))


_OPS = st.lists(
    st.tuples(st.sampled_from(["pad_token", "pad_token_id", "eos_token", "eos_token_id"]), st.integers(0, 24)),
    max_size=12,
)


@given(ops=_OPS)
def test_safe_tokenizer_property_pad_never_becomes_eos(ops):
    """Whatever is assigned, in whatever order, a safe tokenizer never ends with PAD == EOS; refusals change nothing."""
    tok = safe_tokenizer(toy_tokenizer(pad_token="<pad>", added_tokens=["<|reserved_0|>", "<|reserved_1|>"]))
    for key, token_id in ops:
        value = token_id if key.endswith("_id") else tok.convert_ids_to_tokens(token_id)
        before = dict(tok.special_tokens_map)
        try:
            setattr(tok, key, value)
        except FormatKitValueError:
            assert dict(tok.special_tokens_map) == before
        assert tok.pad_token != tok.eos_token


def test_safe_tokenizer_error_names_the_token_to_use(load_tokenizer):
    tok = safe_tokenizer(load_tokenizer("llama-3"))
    with pytest.raises(FormatKitValueError) as excinfo:
        tok.pad_token = tok.eos_token
    assert "tokenizer.pad_token = '<|reserved_special_token_250|>' (an unused reserved token, id 128255)" in str(
        excinfo.value
    )
    tok2 = safe_tokenizer(load_tokenizer("llama-2"))
    with pytest.raises(FormatKitValueError, match=r"tokenizer.pad_token = '<unk>' \(the UNK token"):
        tok2.pad_token = "</s>"


def test_safe_tokenizer_allows_everything_else_and_refuses_eos_onto_pad(load_tokenizer):
    tok = safe_tokenizer(load_tokenizer("llama-2"))
    tok.pad_token = tok.unk_token
    tok.pad_token = None
    tok.pad_token_id = 0
    tok.bos_token = "<s>"
    tok.eos_token = "</s>"  # re-setting the current EOS is fine
    with pytest.raises(FormatKitValueError, match="EOS would be the PAD token '<unk>'"):
        tok.eos_token = "<unk>"
    assert tok.eos_token == "</s>"


def test_safe_tokenizer_loads_a_bad_tokenizer_and_fixes_it(load_tokenizer):
    tok = safe_tokenizer(load_tokenizer("phi-3-mini"))  # PAD == EOS out of the box: loading is not refused
    assert tok.audit().codes[0] == "pad-equals-eos"
    assert tok.fix() is tok and tok.pad_token == "<unk>"
    assert tok.audit().ok


@pytest.mark.parametrize("name", ["phi-3-mini", "gpt2", "qwen2", "llama-3"])
def test_safe_tokenizer_round_trip_through_save_pretrained(load_tokenizer, tmp_path, name):
    from transformers import AutoTokenizer

    original_class = type(load_tokenizer(name))
    tok = safe_tokenizer(load_tokenizer(name)).fix()
    if tok.chat_template is None:
        add_chat_template(tok)
    tok.save_pretrained(tmp_path)
    assert type(tok).__name__.startswith("Safe")  # still safe after saving
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == original_class.__name__
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert type(reloaded) is original_class  # plain AutoTokenizer, no trl-formatkit class needed
    assert reloaded.special_tokens_map == tok.special_tokens_map
    assert len(reloaded) == len(tok)
    assert reloaded.pad_token_id == tok.pad_token_id != reloaded.eos_token_id
    assert reloaded.chat_template == tok.chat_template
    text = reloaded.apply_chat_template(CHAT, tokenize=False)
    assert reloaded(text).input_ids == tok(text).input_ids
    assert audit_tokenizer(reloaded).codes == audit_tokenizer(tok).codes


def test_fixed_gpt2_round_trip_keeps_new_tokens(load_tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tok = fix_special_tokens(load_tokenizer("gpt2"), extra_special_tokens=["##[YODA]##>"])
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert len(reloaded) == 50260
    assert reloaded.encode("<|im_start|>hi<pad>##[YODA]##>") == [50257, 5303, 50258, 50259]
    assert (reloaded.bos_token, reloaded.pad_token) == ("<|im_start|>", "<pad>")


def test_safe_tokenizer_survives_deepcopy_and_pickle(load_tokenizer):
    tok = safe_tokenizer(load_tokenizer("llama-2")).fix()
    for clone in (copy.deepcopy(tok), pickle.loads(pickle.dumps(tok))):
        assert type(clone) is type(tok) and clone is not tok
        assert clone.pad_token == "<unk>" and clone("hi").input_ids == tok("hi").input_ids
        with pytest.raises(FormatKitValueError):
            clone.pad_token = clone.eos_token


def test_mixin_in_a_user_class(tokenizer_path, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    class MyTokenizer(SafeSpecialTokensMixin, PreTrainedTokenizerFast):
        pass

    tok = MyTokenizer.from_pretrained(str(tokenizer_path("phi-3-mini")))  # PAD == EOS in its config: loads
    assert tok.pad_token == tok.eos_token
    with pytest.raises(FormatKitValueError):
        tok.pad_token_id = tok.eos_token_id
    tok.fix().save_pretrained(tmp_path)
    assert json.loads((tmp_path / "tokenizer_config.json").read_text())["tokenizer_class"] != "MyTokenizer"
    assert AutoTokenizer.from_pretrained(tmp_path).pad_token == "<unk>"


def test_safe_tokenizer_bad_input():
    from transformers import PreTrainedTokenizerFast

    with pytest.raises(FormatKitTypeError, match="expected a Hugging Face tokenizer"):
        safe_tokenizer(object())
    with pytest.raises(FormatKitTypeError, match="not a class"):
        safe_tokenizer(PreTrainedTokenizerFast)


# ---------------------------------------------------------------------------------------------------------------
# chat templates
# ---------------------------------------------------------------------------------------------------------------

# The chapter's printed template for OPT after modify_tokenizer (BOS '<|im_start|>', EOS '</s>'), character for
# character, and its printed rendering.
CHAPTER_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '</s>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHAPTER_RENDERED = "<|im_start|>user\nWhat is the capital of Argentina?</s>\n<|im_start|>assistant\nBuenos Aires.</s>\n"


def opt_like_tokenizer():
    """OPT's special tokens as the chapter prints them: BOS = EOS = UNK = '</s>', PAD '<pad>'."""
    return toy_tokenizer(bos_token="</s>", unk_token="</s>", pad_token="<pad>")


def test_add_chat_template_reproduces_the_chapter():
    tok = fix_special_tokens(opt_like_tokenizer())
    assert tok.special_tokens_map == {  # the chapter's printed map after modify_tokenizer
        "bos_token": "<|im_start|>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
    }
    add_chat_template(tok, generation_markers=False)
    assert tok.chat_template == CHAPTER_TEMPLATE
    assert tok.apply_chat_template(CHAT, tokenize=False) == CHAPTER_RENDERED
    add_chat_template(tok)  # with markers: same text, and assistant masks work
    assert "{% generation %}" in tok.chat_template
    assert tok.apply_chat_template(CHAT, tokenize=False) == CHAPTER_RENDERED
    prompt = tok.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_start|>assistant\n")


def test_chatml_markers_train_answer_and_eos_only(load_tokenizer):
    tok = fix_special_tokens(load_tokenizer("phi-3-mini"))
    tok.chat_template = None
    add_chat_template(tok)  # phi-3's own BOS '<s>' and EOS '<|endoftext|>'
    out = tok.apply_chat_template(CHAT, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    trained = [i for i, m in zip(ids, mask, strict=True) if m]
    assert tok.decode(trained) == "Buenos Aires.<|endoftext|>"
    report = audit_tokenizer(tok)
    assert report.ok and "no-generation-markers" not in report.codes


def test_named_templates(load_tokenizer):
    tok = fix_special_tokens(load_tokenizer("qwen2"))
    original = tok.chat_template
    tok.chat_template = None
    add_chat_template(tok, "chatml")
    assert tok.apply_chat_template(CHAT, tokenize=False) == (
        "<|im_start|>user\nWhat is the capital of Argentina?<|im_end|>\n"
        "<|im_start|>assistant\nBuenos Aires.<|im_end|>\n"
    )
    assert original.replace("{% if loop.first and messages[0]['role'] != 'system' %}", "") != tok.chat_template
    add_chat_template(tok, "zephyr")
    rendered = tok.apply_chat_template(CHAT, tokenize=False)
    assert rendered == (
        "<|user|>\nWhat is the capital of Argentina?<|endoftext|>\n<|assistant|>\nBuenos Aires.<|endoftext|>\n"
    )
    assert audit_tokenizer(tok).ok
    assert set(CHAT_TEMPLATES) == {"chatml-bos-eos", "chatml", "zephyr"}


def test_add_chat_template_errors(load_tokenizer):
    tok = load_tokenizer("gpt2")  # BOS == EOS: the chapter's ChatML needs fix_special_tokens first
    with pytest.raises(FormatKitValueError, match=r"call fix_special_tokens\(tokenizer\) first"):
        add_chat_template(tok)
    with pytest.raises(FormatKitValueError, match=r"needs \['<\|im_start\|>', '<\|im_end\|>'\]"):
        add_chat_template(tok, "chatml")
    with pytest.raises(FormatKitKeyError, match="unknown chat template 'chatm'. Did you mean 'chatml'"):
        add_chat_template(tok, "chatm")
    with pytest.raises(FormatKitTypeError):
        add_chat_template(tok, 42)
    broken = "{% for m in messages %}{{ m['content'] | no_such_filter }}{% endfor %}"
    with pytest.raises(FormatKitValueError, match="does not render.*no_such_filter"):
        add_chat_template(tok, broken)
    strict = (
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{{ raise_exception('no assistants') }}{% endif %}"
        "{% endfor %}"
    )
    with pytest.raises(FormatKitValueError, match="no assistants"):
        add_chat_template(tok, strict)
    assert tok.chat_template is None  # a failed call leaves the tokenizer as it was
    assert issubclass(FormatKitKeyError, FormatKitError)


def test_add_chat_template_custom_jinja(load_tokenizer):
    tok = fix_special_tokens(load_tokenizer("llama-2"))
    template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + eos_token }}{% endfor %}"
    assert add_chat_template(tok, template).chat_template == template


# ---------------------------------------------------------------------------------------------------------------
# models: audit, resize, sync
# ---------------------------------------------------------------------------------------------------------------


def test_phi3_tokenizer_larger_than_embeddings_is_reported_and_resized(load_tokenizer):
    tok = fix_special_tokens(load_tokenizer("phi-3-mini"))
    model = tiny_phi3(32000)
    report = audit_tokenizer(tok, model)
    f = finding(report, "vocab-exceeds-embeddings")
    assert f.values == {"len(tokenizer)": 32011, "embedding_rows": 32000}
    assert "multiple of 256" in f.fix
    assert "config-token-ids" in codes(report)  # Phi3Config's pad 32000 is not the fixed pad 0
    assert finding(report, "end-of-turn-not-eos").severity == "problem"  # with a model it breaks generation

    new_ids = resize_embeddings(model, tok)
    assert rows(model) == 32256 and rows(model) % 256 == 0
    assert model.get_output_embeddings().weight.shape[0] == 32256
    assert new_ids == list(range(32000, 32011))
    assert model.config.pad_token_id == 0 and model.config.eos_token_id == 32000
    assert model.generation_config.pad_token_id == 0
    assert model.generation_config.eos_token_id == [32000, 32007]  # plus the template's end-of-turn
    after = audit_tokenizer(tok, model)
    assert after.ok, str(after)
    assert "empty-embedding-slots" in codes(after, "note")
    # new rows start near the old rows' mean, not at zero or noise
    weight = model.get_input_embeddings().weight.detach()
    old_mean = weight[:32000].mean(0)
    assert torch.allclose(weight[32000:].mean(0), old_mean, atol=1e-2)
    assert model(torch.tensor([[32010, 32007, 0]])).logits.shape == (1, 3, 32256)


def test_never_shrinks(load_tokenizer):
    tok = fix_special_tokens(load_tokenizer("gpt2"))
    assert len(tok) == 50259
    model = tiny_gpt2(50368)
    before = model.get_input_embeddings().weight.detach().clone()
    new_ids = resize_embeddings(model, tok)
    assert rows(model) == 50368
    assert torch.equal(model.get_input_embeddings().weight, before)
    assert new_ids == [50257, 50258]  # fix_special_tokens' new tokens sit in empty (untrained) slots
    assert model.config.pad_token_id == tok.pad_token_id == 50258
    assert model.config.bos_token_id == 50257 and model.config.eos_token_id == 50256


def test_resize_keeps_power_of_two_multiple_and_honours_an_explicit_one(load_tokenizer):
    tok = load_tokenizer("phi-3-mini")
    model = tiny_llama(32000)
    resize_embeddings(model, tok, pad_to_multiple_of=64)
    assert rows(model) == 32064  # phi-3-mini's real embedding size
    with pytest.raises(FormatKitValueError, match="pad_to_multiple_of must be a positive int"):
        resize_embeddings(model, tok, pad_to_multiple_of=0)


@settings(max_examples=15, deadline=None)
@given(old=st.integers(8, 96), grow=st.integers(-8, 40))
def test_resize_property(old, grow):
    """Rows never shrink; when they grow, they land on the first multiple of (old & -old) that fits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    words = [f"w{i}" for i in range(max(1, old + grow - 3))]
    tok = toy_tokenizer(words=words, pad_token="<pad>")
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=old, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1)  # fmt: skip
    )
    new_ids = resize_embeddings(model, tok, mean_resizing=False)
    size, multiple = len(tok), old & -old
    expected = old if size <= old else -(-size // multiple) * multiple
    assert rows(model) == expected >= old
    assert new_ids == list(range(old, size))


def test_config_disagreements_and_generation_pad_in_eos(load_tokenizer):
    tok = fix_special_tokens(load_tokenizer("llama-2"))
    add_chat_template(tok, "zephyr")
    model = tiny_llama(32000, pad_token_id=None, bos_token_id=1, eos_token_id=2)
    report = audit_tokenizer(tok, model)
    pads = [f for f in report.problems if f.code == "config-token-ids"]
    assert {tuple(f.values) for f in pads} >= {("config.pad_token_id", "tokenizer.pad_token_id")}
    model.generation_config.pad_token_id = 2
    model.generation_config.eos_token_id = [2]
    f = finding(audit_tokenizer(tok, model), "generation-pad-in-eos")
    assert f.values == {"pad_token_id": 2, "eos_token_id": [2]}
    model.config.eos_token_id = 5
    assert any("eos_token_id" in str(f.values) for f in audit_tokenizer(tok, model).problems)
    assert resize_embeddings(model, tok) == []
    assert audit_tokenizer(tok, model).ok
    assert model.generation_config.pad_token_id == 0 and model.generation_config.eos_token_id == 2


def test_generation_eos_list_keeps_other_stops_but_drops_the_pad(load_tokenizer):
    tok = fix_special_tokens(load_tokenizer("phi-3-mini"))
    model = tiny_phi3(32064)
    model.generation_config.eos_token_id = [32000, 32001, 32007, 0]
    resize_embeddings(model, tok)
    assert model.generation_config.eos_token_id == [32000, 32001, 32007]
    assert rows(model) == 32064  # 32011 tokens fit: no resize


def test_embedding_padding_idx_note(load_tokenizer):
    tok = fix_special_tokens(load_tokenizer("llama-2"))
    model = tiny_llama(32000, pad_token_id=5)
    assert model.get_input_embeddings().padding_idx == 5
    assert finding(audit_tokenizer(tok, model), "embedding-padding-idx").values == {
        "padding_idx": 5,
        "pad_token_id": 0,
    }


def test_model_without_input_embeddings_is_a_clear_error(load_tokenizer):
    tok = load_tokenizer("llama-2")

    class NoEmbeddings(torch.nn.Module):
        def get_input_embeddings(self):
            raise NotImplementedError

    for bad in (torch.nn.Linear(2, 2), NoEmbeddings()):
        with pytest.raises(FormatKitTypeError, match="has no input embeddings"):
            resize_embeddings(bad, tok)
        with pytest.raises(FormatKitTypeError, match="has no input embeddings"):
            audit_tokenizer(tok, bad)
        with pytest.raises(FormatKitTypeError, match="has no input embeddings"):
            setup_chat_format(bad, load_tokenizer("llama-2"))


# ---------------------------------------------------------------------------------------------------------------
# PEFT and bitsandbytes
# ---------------------------------------------------------------------------------------------------------------


def test_resize_through_a_peft_wrapper(load_tokenizer):
    peft = pytest.importorskip("peft", reason="peft is the [peft] extra")
    tok = fix_special_tokens(load_tokenizer("phi-3-mini"))
    model = peft.get_peft_model(tiny_llama(32000), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert "vocab-exceeds-embeddings" in audit_tokenizer(tok, model).codes
    new_ids = resize_embeddings(model, tok)
    assert rows(model) == 32256 and new_ids == list(range(32000, 32011))
    assert model.base_model.model.config.pad_token_id == 0
    assert model(input_ids=torch.tensor([[1, 32010]])).logits.shape[-1] == 32256
    assert audit_tokenizer(tok, model).ok


def test_resize_refuses_peft_wrapped_embeddings(load_tokenizer):
    peft = pytest.importorskip("peft", reason="peft is the [peft] extra")
    model = peft.get_peft_model(
        tiny_llama(32000),
        peft.LoraConfig(r=4, target_modules=["q_proj"], trainable_token_indices={"embed_tokens": [1, 2]}),
    )
    with pytest.raises(FormatKitTypeError, match="wrapped by PEFT"):
        resize_embeddings(model, load_tokenizer("phi-3-mini"))


@pytest.mark.parametrize("tied", [True, False])
def test_lora_kwargs_train_exactly_the_new_rows(load_tokenizer, tied):
    peft = pytest.importorskip("peft", reason="peft is the [peft] extra")
    tok = fix_special_tokens(load_tokenizer("gpt2"))  # two new tokens
    model = tiny_llama(50257, tie_word_embeddings=tied)
    new_ids = resize_embeddings(model, tok)
    assert new_ids == [50257, 50258] and rows(model) == 50258 - 1 + 2  # 50257 is odd: multiple of 1
    kwargs = new_token_lora_kwargs(model, new_ids)
    expected = {"embed_tokens": new_ids} if tied else {"embed_tokens": new_ids, "lm_head": new_ids}
    assert kwargs == {"trainable_token_indices": expected}
    peft_model = peft.get_peft_model(model, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"], **kwargs))
    embed = peft_model.get_input_embeddings()
    probe = torch.tensor([[5, 50257, 50258]])
    before = embed(probe).detach().clone()
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=1.0)
    batch = torch.tensor([[50257, 5, 6, 50258, 50256]])
    peft_model(input_ids=batch, labels=batch).loss.backward()
    optimizer.step()
    after = embed(probe).detach()
    assert torch.equal(before[0, 0], after[0, 0])  # an old token's row is untouched
    assert not torch.equal(before[0, 1], after[0, 1]) and not torch.equal(before[0, 2], after[0, 2])


def test_lora_kwargs_fallback_and_errors():
    pytest.importorskip("peft", reason="peft is the [peft] extra")
    model = tiny_llama(64)

    class ScaledEmbedding(torch.nn.Module):  # not an nn.Embedding: trainable_token_indices cannot wrap it
        def __init__(self, inner):
            super().__init__()
            self.inner, self.weight = inner, inner.weight

        def forward(self, ids):
            return self.inner(ids) * 2.0

    model.model.embed_tokens = ScaledEmbedding(model.model.embed_tokens)
    assert new_token_lora_kwargs(model, [60, 61]) == {"modules_to_save": ["embed_tokens", "lm_head"]}
    assert new_token_lora_kwargs(model, []) == {}
    with pytest.raises(FormatKitValueError, match=r"token ids \[64\] lie outside .*resize_embeddings"):
        new_token_lora_kwargs(tiny_llama(64), [63, 64])


@pytest.fixture(scope="module")
def four_bit_llama(tmp_path_factory):
    """A tiny Llama loaded in 4 bit (bitsandbytes nf4 on CPU), the way QLoRA loads a checkpoint."""
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is the [qlora] extra: pip install 'trl-formatkit[qlora]'")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama(32000).save_pretrained(folder)
    try:
        return AutoModelForCausalLM.from_pretrained(
            folder,
            quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4"),
            device_map="cpu",
        )
    except Exception as error:  # pragma: no cover - a bitsandbytes build without a CPU backend
        pytest.skip(f"this bitsandbytes build cannot load a 4-bit model on this machine: {error}")


def test_resize_a_4bit_model(load_tokenizer, four_bit_llama):
    import bitsandbytes as bnb

    model = four_bit_llama
    assert isinstance(model.model.layers[0].mlp.up_proj, bnb.nn.Linear4bit)  # really quantised
    assert type(model.get_input_embeddings()) is torch.nn.Embedding  # ... but not the embedding
    tok = fix_special_tokens(load_tokenizer("phi-3-mini"))
    new_ids = resize_embeddings(model, tok)
    assert rows(model) == 32256 and new_ids == list(range(32000, 32011))
    assert model(torch.tensor([[1, 32010]])).logits.shape[-1] == 32256
    assert audit_tokenizer(tok, model).ok


def test_quantised_output_layer_is_a_clear_error(load_tokenizer):
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is the [qlora] extra")
    model = tiny_llama(32000)
    model.lm_head = bnb.nn.Linear4bit(32, 32000, bias=False)
    with pytest.raises(FormatKitTypeError, match=r"output embedding \(lm_head\) is quantised \(Linear4bit\)"):
        resize_embeddings(model, load_tokenizer("phi-3-mini"))


# ---------------------------------------------------------------------------------------------------------------
# setup_chat_format
# ---------------------------------------------------------------------------------------------------------------


def test_setup_chat_format_never_pad_eos_never_shrinks(load_tokenizer):
    tok = load_tokenizer("gpt2")
    model = tiny_gpt2(50368)
    out_model, out_tok = setup_chat_format(model, tok)
    assert out_model is model and out_tok is tok
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert tok.pad_token_id != tok.eos_token_id
    assert tok.pad_token == "<|endoftext|>"  # the former EOS serves; no third new token
    assert len(tok) == 50259 and rows(model) == 50368  # trl 0.19 resized this to 50259
    assert tok.apply_chat_template(CHAT, tokenize=False) == (
        "<|im_start|>user\nWhat is the capital of Argentina?<|im_end|>\n"
        "<|im_start|>assistant\nBuenos Aires.<|im_end|>\n"
    )
    assert model.config.eos_token_id == tok.eos_token_id == model.generation_config.eos_token_id
    assert model.config.pad_token_id == tok.pad_token_id
    assert audit_tokenizer(tok, model).ok
    assert resize_embeddings(model, tok) == [50257, 50258]  # the new ChatML tokens, to train


def test_setup_chat_format_grows_to_the_power_of_two_multiple(load_tokenizer):
    tok = load_tokenizer("llama-2")
    model = tiny_llama(32000)
    setup_chat_format(model, tok)
    assert tok.pad_token == "<unk>" and len(tok) == 32002
    assert rows(model) == 32256
    setup_chat_format(tiny_llama(32000), fix := load_tokenizer("llama-2"), resize_to_multiple_of=64)
    assert fix.pad_token == "<unk>"


def test_setup_chat_format_matches_trl_019_rendering(load_tokenizer):
    """Same template text and special tokens as trl 0.19's ChatMlSpecialTokens (besides PAD and markers)."""
    tok = load_tokenizer("llama-2")
    setup_chat_format(tiny_llama(32000), tok)
    trl_template = (
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
        "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    for messages, prompt in ((CHAT, False), (CHAT[:1], True)):
        ours = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)
        theirs = tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=prompt, chat_template=trl_template
        )
        assert ours == theirs
    assert {"<|im_start|>", "<|im_end|>"} <= set(tok.extra_special_tokens)


def test_setup_chat_format_errors(load_tokenizer):
    tok = load_tokenizer("phi-3-mini")
    with pytest.raises(FormatKitValueError, match="already has a chat template.*chat_template = None"):
        setup_chat_format(tiny_llama(32000), tok)
    tok.chat_template = None
    with pytest.raises(FormatKitValueError, match="format 'zephyr' is not available"):
        setup_chat_format(tiny_llama(32000), tok, format="zephyr")
    n = len(tok)
    with pytest.raises(FormatKitTypeError):
        setup_chat_format(torch.nn.Linear(2, 2), tok)
    assert len(tok) == n and tok.eos_token == "<|endoftext|>"  # nothing changed before the error


# ---------------------------------------------------------------------------------------------------------------
# against the original: trl 0.19.1's setup_chat_format in its own interpreter (dev-time; skipped where absent)
# ---------------------------------------------------------------------------------------------------------------

from book_facts import REF_PYTHON  # noqa: E402
_REF_SCRIPT = r"""
import json, sys, torch
from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel
from trl import setup_chat_format
tok = AutoTokenizer.from_pretrained(sys.argv[1])
torch.manual_seed(0)
model = GPT2LMHeadModel(GPT2Config(vocab_size=50368, n_embd=32, n_layer=2, n_head=4, n_positions=64))
model, tok = setup_chat_format(model, tok)
messages = json.loads(sys.argv[2])
print(json.dumps({
    "bos": tok.bos_token, "eos": tok.eos_token, "pad": tok.pad_token, "len": len(tok),
    "rows": model.get_input_embeddings().weight.shape[0],
    "text": tok.apply_chat_template(messages, tokenize=False),
    "prompt": tok.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True),
    "ids": tok.apply_chat_template(messages, tokenize=True),
}))
"""


def test_setup_chat_format_against_trl_019(load_tokenizer, tokenizer_path, tmp_path):
    if not REF_PYTHON.is_file():
        pytest.skip(f"reference interpreter {REF_PYTHON} (trl 0.19.1) not found; set FORMATKIT_REF_PYTHON")
    import shutil

    folder = tmp_path / "gpt2"
    shutil.copytree(tokenizer_path("gpt2"), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "GPT2TokenizerFast"  # a class transformers 4.x knows
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    proc = subprocess.run(
        [str(REF_PYTHON), "-c", _REF_SCRIPT, str(folder), json.dumps(CHAT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    theirs = json.loads(proc.stdout.strip().splitlines()[-1])

    model, tok = setup_chat_format(tiny_gpt2(50368), load_tokenizer("gpt2"))
    # the same ChatML: tokens, rendered text, generation prompt and token ids
    assert (tok.bos_token, tok.eos_token, len(tok)) == (theirs["bos"], theirs["eos"], theirs["len"])
    assert tok.apply_chat_template(CHAT, tokenize=False) == theirs["text"]
    assert tok.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True) == theirs["prompt"]
    assert tok.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"] == theirs["ids"]
    # the flaws trl 0.19 had, and we do not
    assert theirs["pad"] == theirs["eos"] == "<|im_end|>" and tok.pad_token != tok.eos_token
    assert theirs["rows"] == 50259 < 50368 == rows(model)  # trl shrank the embeddings
