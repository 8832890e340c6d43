"""``batched_formatting_func``, ``check_formatting_func`` (the book's ArrowInvalid trap), ``check_formatted_text``."""

from __future__ import annotations

import pyarrow as pa
import pytest
from datasets import Dataset
from hypothesis import given
from hypothesis import strategies as st

from trl_formatkit import batched_formatting_func, check_formatted_text, check_formatting_func, to_messages
from trl_formatkit.errors import FormatKitTypeError, FormatKitValueError
from trl_formatkit.formats import template_markers

from book_facts import BATCH_MESSAGES, BATCH_PROMPTS_COMPLETIONS


@pytest.fixture
def tokenizer_phi(load_tokenizer):
    return load_tokenizer("phi-3-mini")


def make_byo_formatting_func2(tokenizer):
    """The book's In [18], verbatim."""

    def byo_formatting_func2(examples):
        response_template = "### Answer:"
        text = f"### Question: {examples['prompt']}\n{response_template} {examples['completion']}"
        text += tokenizer.eos_token
        return text

    return byo_formatting_func2


# -- batched_formatting_func ------------------------------------------------------------------------------------
def test_book_per_example_function_works_batched_after_wrapping(tokenizer_phi):
    byo_formatting_func2 = make_byo_formatting_func2(tokenizer_phi)
    ds_prompt = Dataset.from_dict(BATCH_PROMPTS_COMPLETIONS)
    # In [19]: one row prints the book's text
    assert byo_formatting_func2(ds_prompt[0]) == (
        "### Question: What is the capital of Argentina?\n### Answer: Buenos Aires.<|endoftext|>"
    )
    # In [20]: the trap is real in this environment ...
    with pytest.raises(pa.ArrowInvalid, match="Column 2 named input_ids expected length 2 but got length 44"):
        ds_prompt.map(lambda v: tokenizer_phi(byo_formatting_func2(v)), batched=True)
    # ... and the wrapped function maps fine, giving In [22]'s columns
    f = batched_formatting_func(byo_formatting_func2)
    out = ds_prompt.map(lambda v: tokenizer_phi(f(v)), batched=True)
    assert out.column_names == ["prompt", "completion", "input_ids", "attention_mask"]
    assert tokenizer_phi.decode(out[1]["input_ids"]) == byo_formatting_func2(ds_prompt[1])
    # per row (what SFTTrainer(formatting_func=...) passes) it is the original function
    assert ds_prompt.map(lambda row: {"text": f(row)})["text"] == [byo_formatting_func2(r) for r in ds_prompt]
    assert f(ds_prompt[0]) == byo_formatting_func2(ds_prompt[0])
    assert f.__name__ == "byo_formatting_func2" and f.__wrapped__ is byo_formatting_func2
    assert batched_formatting_func(f) is f


def test_wrapped_function_in_sft_trainer_style_per_example_map(tokenizer_phi):
    """trl's SFTTrainer maps `{"text": formatting_func(example)}` with batched=False: LazyRow in, string out."""
    f = batched_formatting_func(lambda row: tokenizer_phi.apply_chat_template(row["messages"], tokenize=False))
    ds = Dataset.from_dict({"messages": BATCH_MESSAGES})
    per_row = ds.map(lambda example: {"text": f(example)}, batched=False)["text"]
    batched = ds.map(lambda batch: {"text": f(batch)}, batched=True)["text"]
    assert per_row == batched
    assert per_row[0].startswith("<|user|>\nWhat is the capital of Argentina?<|end|>")


def test_plain_dict_rows_and_batches_are_told_apart():
    f = batched_formatting_func(lambda row: f"{row['messages'][0]['content']}|{len(row['messages'])}")
    assert f({"messages": BATCH_MESSAGES[0]}) == "What is the capital of Argentina?|2"  # a row: list of dicts
    assert f({"messages": BATCH_MESSAGES}) == [  # a batch: list of lists
        "What is the capital of Argentina?|2",
        "What is the capital of the United States?|2",
    ]
    tags = batched_formatting_func(lambda row: ",".join(row["tags"]), batched=False)
    assert tags({"tags": ["a", "b"]}) == "a,b"  # forced row
    assert batched_formatting_func(lambda row: "x")({"a": []}) == []  # an empty batch
    extra = batched_formatting_func(lambda row, suffix: row["a"] + suffix)
    assert extra({"a": ["x", "y"]}, "!") == ["x!", "y!"] and extra({"a": "x"}, suffix="?") == "x?"


def test_wrapped_function_errors():
    already_batched = batched_formatting_func(lambda examples: [p for p in examples["prompt"]])
    with pytest.raises(FormatKitTypeError, match="returned a list for one row.*does not need batched_formatting_func"):
        already_batched({"prompt": "P"})
    not_text = batched_formatting_func(lambda row: {"text": row["a"]})
    with pytest.raises(FormatKitTypeError, match=r"must return the formatted text \(a string\) for row 0 of a batch"):
        not_text({"a": ["x", "y"]})
    with pytest.raises(FormatKitTypeError, match="takes a function"):
        batched_formatting_func("nope")  # type: ignore[arg-type]
    with pytest.raises(FormatKitTypeError, match="takes a row or a batch"):
        batched_formatting_func(lambda row: "x")(["not", "a", "dict"])
    with pytest.raises(FormatKitValueError, match="different lengths"):
        batched_formatting_func(lambda row: "x", batched=True)({"a": [1, 2], "b": [1]})


@given(st.lists(st.tuples(st.text(max_size=20), st.text(max_size=20)), max_size=8))
def test_wrapped_batch_equals_per_row(pairs):
    def fmt(row):
        return f"Q: {row['prompt']}\nA: {row['completion']}"

    f = batched_formatting_func(fmt)
    batch = {"prompt": [p for p, _ in pairs], "completion": [c for _, c in pairs]}
    assert f(batch) == [fmt({"prompt": p, "completion": c}) for p, c in pairs]


# -- check_formatting_func --------------------------------------------------------------------------------------
def test_check_formatting_func_explains_the_book_arrow_invalid_trap(tokenizer_phi):
    byo_formatting_func2 = make_byo_formatting_func2(tokenizer_phi)
    ds_prompt = Dataset.from_dict(BATCH_PROMPTS_COMPLETIONS)
    with pytest.raises(FormatKitTypeError) as info:
        check_formatting_func(byo_formatting_func2, ds_prompt, tokenizer=tokenizer_phi)
    message = str(info.value)
    assert "returned one string for a batch of 2 rows" in message
    # the exact error map would raise, as the book printed it
    assert "ArrowInvalid: Column 2 named input_ids expected length 2 but got length 44" in message
    assert "batched_formatting_func(byo_formatting_func2)" in message
    # without a tokenizer: the same explanation, without the token count
    with pytest.raises(FormatKitTypeError, match="expected length 2 but got length <tokens in that string>"):
        check_formatting_func(byo_formatting_func2, BATCH_PROMPTS_COMPLETIONS)


def test_check_formatting_func_accepts_correct_functions(tokenizer_phi):
    ds_prompt = Dataset.from_dict(BATCH_PROMPTS_COMPLETIONS)

    def byo_formatting_func3(examples):  # In [21]
        output_texts = []
        response_template = "### Answer:"
        for i in range(len(examples["prompt"])):
            text = f"### Question: {examples['prompt'][i]}\n {response_template} {examples['completion'][i]}"
            text += tokenizer_phi.eos_token
            output_texts.append(text)
        return output_texts

    texts = check_formatting_func(byo_formatting_func3, ds_prompt)
    assert texts[0] == "### Question: What is the capital of Argentina?\n ### Answer: Buenos Aires.<|endoftext|>"
    wrapped = batched_formatting_func(make_byo_formatting_func2(tokenizer_phi))
    assert len(check_formatting_func(wrapped, [dict(r) for r in ds_prompt])) == 2
    assert check_formatting_func(wrapped, ds_prompt.to_iterable_dataset()) == [wrapped(r) for r in ds_prompt]


def test_check_formatting_func_other_failures():
    batch = {"a": ["x", "y", "z"]}
    with pytest.raises(FormatKitValueError, match="returned 1 strings for a batch of 3 rows"):
        check_formatting_func(lambda b: ["only one"], batch, num_rows=3)
    with pytest.raises(FormatKitTypeError, match="must return a list of strings for a batch, got dict"):
        check_formatting_func(lambda b: {"text": b["a"]}, batch)
    with pytest.raises(FormatKitTypeError, match=r"failed on a batch of 2 rows .*KeyError"):
        check_formatting_func(lambda b: b["missing"], batch)
    with pytest.raises(FormatKitValueError, match="at least 2 rows"):
        check_formatting_func(lambda b: b["a"], {"a": ["x"]})
    with pytest.raises(FormatKitValueError, match="num_rows must be at least 2"):
        check_formatting_func(lambda b: b["a"], batch, num_rows=1)
    with pytest.raises(FormatKitTypeError, match="takes a datasets.Dataset, a batch dict or a list of rows"):
        check_formatting_func(lambda b: b["a"], 42)


# -- template markers and check_formatted_text ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("phi-3-mini", ("<|user|>", "<|end|>", "<|assistant|>")),
        ("qwen2", ("<|im_start|>", "<|im_end|>")),
        ("llama-2", ()),  # no chat template
    ],
)
def test_template_markers_of_real_tokenizers(load_tokenizer, name, expected):
    assert template_markers(load_tokenizer(name)) == expected


def test_template_markers_of_a_plain_text_template(load_tokenizer):
    tok = load_tokenizer("llama-2")
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'user' %}### User: {{ m['content'] }}\n\n"
        "{% else %}### Assistant: {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
    )
    assert template_markers(tok) == ("### User:", "### Assistant:")


def test_byofd_texts_pass_the_check(tokenizer_phi):
    """The book's BYOFD output (In [24]) uses the template and ends with EOS."""
    ds_msg = Dataset.from_dict({"messages": BATCH_MESSAGES})

    def byofd_formatting_func(examples):  # In [23]
        messages = examples["messages"]
        output_texts = tokenizer_phi.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
        return {"text": output_texts}

    formatted_ds = ds_msg.map(byofd_formatting_func, batched=True)
    report = check_formatted_text(formatted_ds, tokenizer_phi)
    assert report.ok and report.problems == () and report.num_texts == 2
    assert report.markers == ("<|user|>", "<|end|>", "<|assistant|>") and report.eos_token == "<|endoftext|>"
    assert str(report) == "checked 2 formatted text(s): OK"


def test_text_in_another_format_is_reported_with_a_fix(tokenizer_phi):
    texts = [make_byo_formatting_func2(tokenizer_phi)(row) for row in Dataset.from_dict(BATCH_PROMPTS_COMPLETIONS)]
    texts.append("<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n")  # templated, but no EOS
    texts.append("<|user|>\nHi<|end|>\n<|assistant|>\nHello<|end|>\n<|endoftext|>\n")  # whitespace after EOS
    report = check_formatted_text(texts, tokenizer_phi)
    assert not report.ok
    assert report.without_markers == (0, 1) and report.without_eos == (2, 3)
    assert "2 of 4 texts do not use the tokenizer's chat-template markers" in report.problems[0]
    assert "apply_chat_template" in report.problems[0] and "### Question:" in report.problems[0]
    assert "2 of 4 texts do not end with the EOS token '<|endoftext|>'" in report.problems[1]
    assert "append tokenizer.eos_token" in report.problems[1]
    assert "ends with whitespace after EOS" in check_formatted_text(texts[3], tokenizer_phi).problems[0]
    assert str(report).startswith("checked 4 formatted text(s): 2 problem(s)\n- ")


def test_chatml_template_without_eos_is_reported(load_tokenizer):
    """qwen2's template ends turns with <|im_end|>, not its EOS <|endoftext|>: text made with it lacks EOS."""
    qwen = load_tokenizer("qwen2")
    text = qwen.apply_chat_template(BATCH_MESSAGES[0], tokenize=False)
    report = check_formatted_text(text, qwen)
    assert report.without_markers == () and report.without_eos == (0,)
    assert check_formatted_text(text + qwen.eos_token, qwen).ok


def test_double_bos_and_missing_template_are_seen(load_tokenizer):
    llama = load_tokenizer("llama-2")  # adds <s>, has no chat template
    report = check_formatted_text(["<s>### User: hi\n### Assistant: yo</s>", "### User: hi</s>"], llama)
    assert report.double_bos == (0,) and report.without_eos == ()
    assert "start with the BOS token '<s>'" in report.problems[0]
    assert report.notes == ("the tokenizer has no chat template, so template markers were not checked",)
    phi = load_tokenizer("phi-3-mini")  # does not add BOS: a leading <s> is a single BOS
    assert check_formatted_text("<s><|user|>\nx<|end|>\n<|assistant|>\ny<|end|>\n<|endoftext|>", phi).ok


def test_check_formatted_text_inputs(tokenizer_phi):
    with pytest.raises(FormatKitValueError, match="has no 'text' column"):
        check_formatted_text(Dataset.from_dict({"body": ["x"]}), tokenizer_phi)
    report = check_formatted_text(Dataset.from_dict({"body": ["x"]}), tokenizer_phi, dataset_text_field="body")
    assert report.num_texts == 1
    with pytest.raises(FormatKitTypeError, match="item 1 is int"):
        check_formatted_text(["x", 3], tokenizer_phi)


def test_to_messages_then_template_passes_the_check(tokenizer_phi):
    """The library's own route gives text that passes its own check."""
    ds = to_messages(Dataset.from_dict(BATCH_PROMPTS_COMPLETIONS))
    texts = [tokenizer_phi.apply_chat_template(m, tokenize=False) for m in ds["messages"]]
    assert check_formatted_text(texts, tokenizer_phi).ok


def test_check_formatting_func_on_rows_with_different_keys_names_the_row():
    """Rows with different keys used to raise a bare KeyError: 'b'."""
    rows = [{"a": "x", "b": "y"}, {"a": "z"}]
    with pytest.raises(FormatKitValueError, match=r"row 1 has the keys \['a'\] but row 0 has \['a', 'b'\]"):
        check_formatting_func(batched_formatting_func(lambda row: row["a"]), rows)
