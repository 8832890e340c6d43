"""Tests for trl_formatkit.special_tokens.embeddings: resize, sync, the model checks of the audit, PEFT and
bitsandbytes."""

from __future__ import annotations


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trl_formatkit import (
    FormatKitTypeError,
    FormatKitValueError,
    add_chat_template,
    audit_tokenizer,
    fix_special_tokens,
    new_token_lora_kwargs,
    resize_embeddings,
    setup_chat_format,
)
from trl_formatkit._toy import toy_tokenizer
from helpers import codes, finding, rows, tiny_gpt2, tiny_llama, tiny_phi3


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
    tok = fix_special_tokens(load_tokenizer("gpt2"), extra_special_tokens=["<tool_call>"])
    assert len(tok) == 50259
    model = tiny_gpt2(50368)
    before = model.get_input_embeddings().weight.detach().clone()
    new_ids = resize_embeddings(model, tok)
    assert rows(model) == 50368
    assert torch.equal(model.get_input_embeddings().weight, before)
    assert new_ids == [50257, 50258]  # fix_special_tokens' new tokens sit in empty (untrained) slots
    assert model.config.pad_token_id == tok.pad_token_id == 50257
    assert model.config.bos_token_id == 50256 == model.config.eos_token_id  # GPT-2's own BOS, never written


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
    tok = fix_special_tokens(load_tokenizer("gpt2"), extra_special_tokens=["<tool_call>"])  # two new tokens
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


def test_new_token_record_survives_save_and_load(load_tokenizer, tmp_path):
    """A token put into an empty embedding slot stays 'untrained' after save_pretrained + from_pretrained (it used
    to come back as [] and new_token_lora_kwargs then gave {}: that row was never trained)."""
    pytest.importorskip("peft", reason="peft is the [peft] extra")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = fix_special_tokens(load_tokenizer("phi-3-mini"), extra_special_tokens=["<tool_call>"])
    model = tiny_phi3(32064)
    assert resize_embeddings(model, tok) == [32011] and rows(model) == 32064  # an empty slot: no resize
    tok.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    tok2, model2 = AutoTokenizer.from_pretrained(tmp_path), AutoModelForCausalLM.from_pretrained(tmp_path)
    assert resize_embeddings(model2, tok2) == [32011]
    assert new_token_lora_kwargs(model2, [32011]) == new_token_lora_kwargs(model, [32011]) != {}
    # a second fix on the reloaded tokenizer adds to the record, and the reloaded copy can be saved again
    fix_special_tokens(tok2, extra_special_tokens=["</tool_call>"])
    tok2.save_pretrained(tmp_path / "again")
    assert resize_embeddings(tiny_phi3(32064), AutoTokenizer.from_pretrained(tmp_path / "again")) == [32011, 32012]
