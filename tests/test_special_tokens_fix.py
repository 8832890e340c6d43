"""Tests for trl_formatkit.special_tokens.fix: fix_special_tokens on the real tokenizers, and a property test."""

from __future__ import annotations


import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trl_formatkit import (
    FormatKitTypeError,
    FormatKitValueError,
    audit_tokenizer,
    fix_special_tokens,
)
from trl_formatkit._toy import toy_tokenizer
from helpers import codes


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


def test_fix_gpt2_adds_only_a_pad_and_says_so(load_tokenizer, caplog):
    """GPT-2 never writes its BOS (== EOS): the fix used to add '<|im_start|>' as BOS anyway, silently."""
    tok = load_tokenizer("gpt2")
    n = len(tok)
    with caplog.at_level(logging.INFO, logger="trl_formatkit"):
        out, summary = fix_special_tokens(tok, return_summary=True)
    assert out is tok
    eos_id = tok.eos_token_id
    assert (tok.eos_token, eos_id) == ("<|endoftext|>", 50256)  # EOS kept
    assert tok.bos_token == "<|endoftext|>"  # left alone: nothing writes it, so no token is invented
    assert tok.pad_token == "<pad>" and tok.pad_token_id == 50257
    assert tok.unk_token_id is None  # GPT-2's byte-level BPE has no UNK: it stays None
    assert len(tok) == n + 1
    assert summary.added == {"<pad>": 50257} and summary.moved == {"pad_token": (None, "<pad>")}
    assert summary.needs_resize
    [record] = [r for r in caplog.records if r.name == "trl_formatkit"]
    assert record.levelno == logging.WARNING and "resize_embeddings(model, tokenizer)" in record.getMessage()
    assert "'<pad>' (id 50257)" in str(summary)
    assert audit_tokenizer(tok).codes[:1] == ["chat-template-missing"]
    # asking for an UNK gives one, distinct from EOS
    fix_special_tokens(tok, unk_token="<unk>")
    assert tok.unk_token == "<unk>" and tok.unk_token_id not in (None, eos_id) and len(tok) == n + 2


def test_fix_that_adds_nothing_logs_at_info(load_tokenizer, caplog):
    tok = load_tokenizer("phi-3-mini")
    with caplog.at_level(logging.INFO, logger="trl_formatkit"):
        _, summary = fix_special_tokens(tok, return_summary=True)
    assert not summary.needs_resize and summary.moved == {"pad_token": ("<|endoftext|>", "<unk>")}
    assert [r.levelno for r in caplog.records if r.name == "trl_formatkit"] == [logging.INFO]
    _, again = fix_special_tokens(tok, return_summary=True)
    assert str(again) == "fix_special_tokens changed nothing"


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
    assert tok.pad_token_id not in (None, tok.eos_token_id)
    assert tok.bos_token == "<|endoftext|>" and tok.pad_token == "[PAD151935]"  # BOS is never written: kept
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
    tok = toy_tokenizer(unk_token="</s>", bos_token="</s>", pad_token=None, add_bos=True)
    n = len(tok)
    fix_special_tokens(tok)  # the chapter's OPT case: BOS, UNK all '</s>', and OPT's tokenizer writes its BOS
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
        fix_special_tokens(toy_tokenizer(bos_token="</s>", add_bos=True), alternative_bos_token="</s>")
    with pytest.raises(FormatKitTypeError, match=r"use \['##>'\]"):
        fix_special_tokens(tok, extra_special_tokens="##>")
    fix_special_tokens(tok, pad_token="<|reserved_0|>")
    assert tok.pad_token == "<|reserved_0|>"


def test_fix_can_unset_a_bos_equal_to_eos():
    tok = fix_special_tokens(toy_tokenizer(bos_token="</s>", add_bos=True), alternative_bos_token=None)
    assert tok.bos_token is None and tok.eos_token == "</s>"


def test_fix_eos_not_in_vocabulary_is_an_error(load_tokenizer):
    tok = load_tokenizer("llama-2")
    tok.eos_token = "<|im_end|>"  # set, never added
    with pytest.raises(FormatKitValueError, match="not in its vocabulary"):
        fix_special_tokens(tok)


# property: whatever the starting point, the fix leaves PAD/UNK (and a written BOS) distinct from EOS, reuses what
# exists, and invents no BOS nothing writes
_SPECIAL = st.sampled_from(["none", "own", "eos"])


@given(
    bos=_SPECIAL,
    unk=_SPECIAL,
    pad=st.sampled_from(["none", "own", "eos", "unk"]),
    reserved=st.integers(0, 2),
    add_bos=st.booleans(),
)
def test_fix_property(bos, unk, pad, reserved, add_bos):
    pick = {"none": None, "eos": "</s>"}
    tok = toy_tokenizer(
        bos_token=pick.get(bos, "<s>"),
        unk_token=pick.get(unk, "<unk>"),
        pad_token=(pick.get(pad, "<pad>") if pad != "unk" else (pick.get(unk, "<unk>"))),
        added_tokens=[f"<|reserved_{i}|>" for i in range(reserved)],
        add_bos=add_bos,
    )
    vocab_before = tok.get_vocab()
    fix_special_tokens(tok)
    eos_id = tok.eos_token_id
    assert tok.eos_token == "</s>"
    assert tok.pad_token is not None and tok.pad_token_id != eos_id
    assert tok.unk_token_id != eos_id
    assert tok.bos_token_id != eos_id if add_bos else tok.bos_token == pick.get(bos, "<s>")
    new = set(tok.get_vocab()) - set(vocab_before)
    # a token is only new when nothing in the vocabulary could serve
    needs_pad = pad in ("none", "eos") or (pad == "unk" and unk != "own")
    expected_new = {
        "<|im_start|>": bos == "eos" and add_bos,
        "<unk>": unk == "eos",  # UNK must leave EOS; PAD then shares it (one new token for both)
        "<pad>": needs_pad and unk == "none" and reserved == 0,
    }
    assert new == {token for token, is_new in expected_new.items() if is_new}
    report = audit_tokenizer(tok)
    assert not {"pad-missing", "pad-equals-eos", "bos-equals-eos", "unk-equals-eos"} & set(codes(report))
