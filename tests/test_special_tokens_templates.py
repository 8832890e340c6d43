"""Tests for trl_formatkit.special_tokens.chat_templates and .chat_format: add_chat_template, setup_chat_format,
and setup_chat_format against trl 0.19.1 itself."""

from __future__ import annotations

import json
import subprocess

import pytest
import torch

from trl_formatkit import (
    CHAT_TEMPLATES,
    FormatKitError,
    FormatKitKeyError,
    FormatKitTypeError,
    FormatKitValueError,
    add_chat_template,
    audit_tokenizer,
    fix_special_tokens,
    resize_embeddings,
    setup_chat_format,
)
from trl_formatkit._toy import toy_tokenizer
from book_facts import REF_PYTHON
from helpers import CHAT, rows, tiny_gpt2, tiny_llama


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
    """OPT's special tokens as the chapter prints them: BOS = EOS = UNK = '</s>', PAD '<pad>'; like OPT's, the
    tokenizer writes its BOS in front of every text."""
    return toy_tokenizer(bos_token="</s>", unk_token="</s>", pad_token="<pad>", add_bos=True)


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
    tok = load_tokenizer("gpt2")  # BOS == EOS: the chapter's ChatML needs a BOS of its own
    with pytest.raises(FormatKitValueError, match=r"give the tokenizer its own BOS first"):
        add_chat_template(fix_special_tokens(tok))  # the fix leaves GPT-2's unwritten BOS alone
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
