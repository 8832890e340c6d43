"""Tests for trl_formatkit.special_tokens.safe: a tokenizer that refuses PAD = EOS, through save, copy and pickle."""

from __future__ import annotations

import copy
import json
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trl_formatkit import (
    FormatKitTypeError,
    FormatKitValueError,
    SafeSpecialTokensMixin,
    add_chat_template,
    audit_tokenizer,
    fix_special_tokens,
    safe_tokenizer,
)
from trl_formatkit._toy import toy_tokenizer
from helpers import CHAT


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
        add_chat_template(tok, "zephyr")  # their BOS is EOS (never written): the chapter's ChatML would write it
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
    assert len(reloaded) == 50259
    assert reloaded.encode("hi<pad>##[YODA]##>") == [5303, 50257, 50258]
    assert (reloaded.bos_token, reloaded.pad_token) == ("<|endoftext|>", "<pad>")


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
