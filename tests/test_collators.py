"""DataCollatorForCompletionOnlyLM: the book chapter's printed batches, real tokenizers, bad input, properties."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from trl_formatkit import DataCollatorForCompletionOnlyLM
from trl_formatkit.errors import FormatKitTypeError, FormatKitValueError, FormatKitWarning, TemplateNotFoundError

# Unusual pad / ignore ids in synthetic tests, so a swap of the two would show.
PAD, EOS, USER, BOT, END, SYSTEM = 7, 3, 1, 2, 8, 9


@pytest.fixture(scope="module")
def word_tok():
    """A tiny offline word-level tokenizer: ids 0-15, one token per space-separated word."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["<unk>", "<user>", "<bot>", "<eos>", "a", "b", "c", "<pad>", "<end>", "<system>"]
    words += [f"w{i}" for i in range(10, 16)]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>",
        additional_special_tokens=["<user>", "<bot>", "<end>", "<system>"],
    )
    return tok


def collate(tok, rows, **kw):
    kw.setdefault("return_tensors", "np")
    return DataCollatorForCompletionOnlyLM(kw.pop("response_template", [BOT]), tokenizer=tok, **kw)(rows)


# -- the book chapter's printed outputs (phi-3-mini, llama-2) ----------------------------------------------
from book_facts import DUMMY_CHAT, DUMMY_IDS, LLAMA_IDS, LLAMA_PROMPT, LLAMA_SPECIAL_IDS, YODA_IDS
from book_facts import YODA_TEXTS as YODA


@pytest.fixture
def phi(load_tokenizer):
    tok = load_tokenizer("phi-3-mini")
    tok.pad_token = tok.unk_token  # the chapter's fix: PAD = UNK, not EOS
    return tok


def test_book_yoda_rows_padded_left_with_unk(phi):
    rows = [{"input_ids": phi(t)["input_ids"]} for t in YODA]
    assert [r["input_ids"] for r in rows] == YODA_IDS
    batch = DataCollatorForCompletionOnlyLM(response_template="<|assistant|>", tokenizer=phi)(rows)
    assert batch["input_ids"].tolist() == [YODA_IDS[0], [0] * 10 + YODA_IDS[1]]
    assert batch["attention_mask"].tolist() == [[1] * 38, [0] * 10 + [1] * 28]
    assert batch["labels"].tolist() == [[-100] * 16 + YODA_IDS[0][16:], [-100] * 23 + YODA_IDS[1][13:]]
    labels = batch["labels"][0]
    assert phi.decode(labels[labels >= 0]) == "On the smooth planks, the birch canoe slid. Yes, hrrrm.<|end|><|endoftext|>"
    assert batch["input_ids"].dtype == torch.int64 and batch["labels"].dtype == torch.int64


def test_book_multi_turn_without_and_with_instruction_template(phi):
    rows = [{"input_ids": phi(DUMMY_CHAT)["input_ids"]}]
    assert rows[0]["input_ids"] == DUMMY_IDS
    labels = DataCollatorForCompletionOnlyLM(response_template="<|assistant|>", tokenizer=phi)(rows)["labels"]
    assert labels.tolist() == [[-100] * 19 + DUMMY_IDS[19:]]
    assert phi.decode(labels[labels >= 0]) == "I'm fine too!\n<|endoftext|>"
    collator = DataCollatorForCompletionOnlyLM(
        instruction_template="<|user|>", response_template="<|assistant|>", tokenizer=phi
    )
    labels = collator(rows)["labels"]
    assert labels.tolist() == [[-100] * 4 + DUMMY_IDS[4:9] + [-100] * 10 + DUMMY_IDS[19:]]
    assert phi.decode(labels[labels >= 0]) == "How are you?\n I'm fine too!\n<|endoftext|>"


def test_book_padding_free_batch_of_66_tokens(phi):
    rows = [{"input_ids": ids} for ids in YODA_IDS]
    batch = DataCollatorForCompletionOnlyLM(response_template="<|assistant|>", tokenizer=phi, padding_free=True)(rows)
    assert set(batch) == {"input_ids", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
                          "max_length_k", "seq_idx"}
    assert batch["input_ids"].shape == (1, 66)
    assert batch["input_ids"].tolist() == [YODA_IDS[0] + YODA_IDS[1]]
    assert int(batch["position_ids"].max()) + 1 == 38
    assert batch["labels"].tolist() == [[-100] * 16 + YODA_IDS[0][16:] + [-100] * 13 + YODA_IDS[1][13:]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 38, 66] and batch["cu_seq_lens_q"].dtype == torch.int32
    assert batch["cu_seq_lens_k"] is batch["cu_seq_lens_q"]
    assert batch["max_length_q"] == batch["max_length_k"] == 38
    assert batch["seq_idx"].tolist() == [[0] * 38 + [1] * 28] and batch["seq_idx"].dtype == torch.int32


@pytest.fixture
def llama(load_tokenizer):
    tok = load_tokenizer("llama-2")
    tok.pad_token = tok.unk_token
    return tok


def test_book_llama2_exact_matching_misses_the_template_and_says_how_to_fix_it(llama):
    rows = [llama(LLAMA_PROMPT)]
    assert rows[0]["input_ids"] == LLAMA_IDS
    collator = DataCollatorForCompletionOnlyLM("### Assistant:", tokenizer=llama, match_in_context=False)
    with pytest.warns(FormatKitWarning) as record:
        labels = collator(rows)["labels"]
    assert labels.tolist() == [[-100] * 20]  # the book's "bad batch": nothing is trained
    message = str(record[0].message)
    assert "1 of 1 sequence(s)" in message
    assert "[835, 4007, 22137, 29901]" in message  # what was searched
    assert "[2277, 29937, 4007, 22137, 29901]" in message  # the ids as they appear in the row: the fix
    assert "match_in_context=True" in message
    assert "### User: Hello" in message  # a decoded preview of the row


def test_book_llama2_template_in_context_just_works(llama):
    rows = [llama(LLAMA_PROMPT)]
    expected = [[-100] * 12 + LLAMA_IDS[12:]]
    assert collate(llama, rows, response_template="### Assistant:")["labels"].tolist() == expected
    fixed = llama.encode("\n### Assistant:", add_special_tokens=False)[2:]  # the book's fix, ids with context
    assert fixed == [2277, 29937, 4007, 22137, 29901]
    assert collate(llama, rows, response_template=fixed)["labels"].tolist() == expected


def test_book_llama2_template_as_added_special_token(llama):
    assert llama.add_special_tokens({"additional_special_tokens": ["### Assistant:"]}) == 1
    assert llama.convert_tokens_to_ids("### Assistant:") == 32000
    # the book's row (transformers 4.x kept a "▁" (29871) after the new token; 5.x drops it): both are right
    book_row = LLAMA_SPECIAL_IDS
    labels = collate(llama, [book_row], response_template="### Assistant:")["labels"]
    assert labels.tolist() == [[-100] * 8 + book_row[8:]]
    row = llama(LLAMA_PROMPT)["input_ids"]
    assert 32000 in row
    labels = collate(llama, [row], response_template="### Assistant:")["labels"][0]
    assert llama.decode(labels[labels >= 0].tolist()).strip() == "Hi, how can I help you?"


# -- five real tokenizers: rendered chats train exactly the assistant answers --------------------------------
CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the capital of Argentina?"},
    {"role": "assistant", "content": "Buenos Aires."},
    {"role": "user", "content": "And of Peru?"},
    {"role": "assistant", "content": "Lima, of course."},
]


def manual_format(tok, messages):
    """A BYOT format for tokenizers without a chat template."""
    text = ""
    for m in messages:
        text += f"### {m['role'].capitalize()}: {m['content']}\n\n"
    return text + tok.eos_token


@pytest.mark.parametrize(
    "name, response, instruction, end",
    [
        ("phi-3-mini", "<|assistant|>", ["<|user|>", "<|system|>"], None),
        ("phi-3-mini", "<|assistant|>", None, "<|end|>"),
        ("qwen2", "<|im_start|>assistant\n", "<|im_start|>user", None),
        ("qwen2", "<|im_start|>assistant\n", None, "<|im_end|>"),
        ("llama-2", "### Assistant:", ["### User:", "### System:"], None),
        ("gpt2", "### Assistant:", ["### User:", "### System:"], None),
        ("llama-3", "### Assistant:", ["### User:", "### System:"], None),
    ],
)
@pytest.mark.parametrize("padding_free", [False, True])
def test_real_tokenizers_train_exactly_the_answers(load_tokenizer, name, response, instruction, end, padding_free):
    tok = load_tokenizer(name)
    if tok.pad_token is None:  # PAD == EOS is fine for this collator: labels come from lengths
        tok.pad_token = tok.unk_token or tok.eos_token
    if tok.chat_template:
        text = tok.apply_chat_template(CHAT, tokenize=False)
    else:
        text = manual_format(tok, CHAT)
    rows = [{"input_ids": tok(text)["input_ids"]}, {"input_ids": tok(text)["input_ids"][:-2]}]
    batch = DataCollatorForCompletionOnlyLM(
        response, instruction, tokenizer=tok, end_template=end, padding_free=padding_free, return_tensors="np"
    )(rows)
    labels = batch["labels"]
    first = labels[0] if not padding_free else labels[0, : len(rows[0]["input_ids"])]
    trained = tok.decode(first[first != -100].tolist())
    assert "Buenos Aires." in trained and "Lima, of course." in trained
    for prompt in ("capital of Argentina", "And of Peru", "You are terse", "user", "User"):
        assert prompt not in trained, (name, trained)
    if end is not None:  # the end-of-turn token is trained, the text after it is not
        assert trained.count(end) == 2


def test_pad_equal_to_eos_is_still_trained(load_tokenizer):
    """trl's collators mask labels by comparing with the pad id: with PAD == EOS the EOS was never trained."""
    tok = load_tokenizer("qwen2")
    assert tok.pad_token_id == tok.eos_token_id
    ids = tok("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|endoftext|>")["input_ids"]
    batch = collate(tok, [{"input_ids": ids}, {"input_ids": ids[:-3] + [tok.eos_token_id]}],
                    response_template="<|im_start|>assistant\n")
    assert batch["labels"][0, -1] == tok.eos_token_id
    assert (batch["labels"][1] == tok.eos_token_id).sum() == 1  # the row's own EOS, not its padding
    assert batch["attention_mask"][1].sum() == len(ids) - 2


# -- configuration and bad input ----------------------------------------------------------------------------
def test_signature_matches_trl_019(word_tok):
    collator = DataCollatorForCompletionOnlyLM("<bot>", "<user>", tokenizer=word_tok, mlm=False, ignore_index=-100)
    assert collator.response_token_ids == [BOT] and collator.instruction_token_ids == [USER]
    assert collator.padding_free is False and collator.on_missing == "warn"


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"tokenizer": None}, FormatKitTypeError, "needs the tokenizer"),
        ({"mlm": True}, FormatKitValueError, "mlm=True"),
        ({"on_missing": "drop"}, FormatKitValueError, "'warn', 'raise' or 'ignore'"),
        ({"return_tensors": "tf"}, FormatKitValueError, "'pt' or 'np'"),
        ({"pad_to_multiple_of": 0}, FormatKitValueError, "positive int"),
        ({"response_template": ""}, FormatKitValueError, "empty"),
        ({"response_template": []}, FormatKitValueError, "empty"),
        ({"response_template": [2.5]}, FormatKitTypeError, "mixes token ids"),
        ({"instruction_template": [BOT]}, FormatKitValueError, "share the token ids"),
    ],
)
def test_bad_configuration(word_tok, kwargs, error, match):
    kwargs = {"response_template": [BOT], "tokenizer": word_tok, **kwargs}
    with pytest.raises(error, match=match):
        DataCollatorForCompletionOnlyLM(kwargs.pop("response_template"), **kwargs)


@pytest.mark.parametrize(
    "rows, error, match",
    [
        ([], FormatKitValueError, "empty batch"),
        ({"input_ids": [[1, 2]]}, FormatKitTypeError, "one dict per row"),
        ([{"text": "a b"}], FormatKitValueError, "no 'input_ids'.*tokenize"),
        ([[USER, BOT, 4], []], FormatKitValueError, "row 1 has no tokens"),
        ([[USER, BOT, 4.5]], FormatKitTypeError, "row 0.*4.5.*not an int"),
        ([np.array([1.0, 2.5])], FormatKitTypeError, "row 0.*not an int"),
        ([["a", "b"]], FormatKitTypeError, "'a'"),
        ([[USER, BOT, -5]], FormatKitValueError, "negative token id -5"),
        ([torch.tensor([[USER, BOT, 4]])], FormatKitValueError, r"shape \(1, 3\).*return_tensors"),
        ([{"input_ids": [USER, BOT, 4], "seq_lengths": [1, 1]}], FormatKitValueError, "add up to"),
    ],
)
def test_bad_rows(word_tok, rows, error, match):
    with pytest.raises(error, match=match):
        collate(word_tok, rows)


def test_no_pad_token_names_the_fix(load_tokenizer):
    tok = load_tokenizer("llama-2")
    assert tok.pad_token is None
    with pytest.raises(FormatKitValueError, match="no pad token.*'<unk>'.*padding_free=True"):
        collate(tok, [[1, 2, 3], [1, 2, 3, 4]], response_template=[2])
    batch = collate(tok, [[1, 2, 3], [1, 2, 3, 4]], response_template=[2], padding_free=True)  # needs no pad id
    assert batch["input_ids"].shape == (1, 7)


def test_on_missing_raise_and_ignore(word_tok):
    rows = [[USER, 4, BOT, 5, EOS], [USER, 4, 5]]
    with pytest.raises(TemplateNotFoundError, match="1 of 2 sequence"):
        collate(word_tok, rows, on_missing="raise")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        labels = collate(word_tok, rows, on_missing="ignore")["labels"]
    assert labels[1].tolist() == [-100] * 5


def test_warns_once_per_batch_with_counts(word_tok):
    rows = [[USER, 4, 5]] * 5 + [[USER, 4, BOT]]  # five without a template, one cut right after it
    with pytest.warns(FormatKitWarning) as record:
        collate(word_tok, rows)
    assert len(record) == 1
    message = str(record[0].message)
    assert "6 of 6 sequence(s)" in message and "not found in 5 row(s)" in message
    assert "1 row(s) (first: row 5) contain the response template but nothing after it" in message


def test_missing_instruction_template_ignores_the_row_like_trl(word_tok):
    with pytest.warns(FormatKitWarning, match="instruction_template"):
        labels = collate(word_tok, [[SYSTEM, 4, BOT, 5, EOS]], instruction_template=[USER])["labels"]
    assert labels.tolist() == [[-100] * 5]


# -- inputs and outputs -------------------------------------------------------------------------------------
def test_inputs_as_lists_arrays_tensors_and_dicts_agree(word_tok):
    ids = [[USER, 4, BOT, 5, EOS], [USER, 6, BOT, EOS]]
    forms = [
        ids,
        [np.array(r, dtype=np.int32) for r in ids],
        [torch.tensor(r) for r in ids],
        [{"input_ids": r, "attention_mask": [1] * len(r)} for r in ids],
        [{"input_ids": torch.tensor(r)} for r in ids],
    ]
    batches = [collate(word_tok, f) for f in forms]
    for b in batches[1:]:
        for key in ("input_ids", "labels", "attention_mask"):
            np.testing.assert_array_equal(b[key], batches[0][key])


def test_incoming_labels_are_recomputed_and_numeric_extras_pass_through(word_tok):
    rows = [
        {"input_ids": [USER, 4, BOT, 5, EOS], "labels": [1, 1, 1, 1, 1], "completion_mask": [0, 0, 0, 1, 1],
         "idx": 3, "text": "x"},
        {"input_ids": [USER, 6, BOT, EOS], "labels": [1, 1, 1, 1], "completion_mask": [0, 0, 0, 1],
         "idx": 4, "text": "y"},
    ]  # fmt: skip
    batch = collate(word_tok, rows)
    assert set(batch) == {"input_ids", "attention_mask", "labels", "idx"}
    assert batch["labels"].tolist() == [[-100, -100, -100, 5, EOS], [-100, -100, -100, EOS, -100]]
    assert batch["idx"].tolist() == [3, 4]


def test_pre_padded_rows_are_repadded(word_tok):
    rows = [{"input_ids": [PAD, PAD, USER, BOT, 5], "attention_mask": [0, 0, 1, 1, 1]}]
    batch = collate(word_tok, rows)
    assert batch["input_ids"].tolist() == [[USER, BOT, 5]]


def test_padding_side_and_multiple(word_tok):
    rows = [[USER, BOT, 5, EOS], [USER, BOT, 6]]
    word_tok.padding_side = "left"
    try:
        batch = collate(word_tok, rows, pad_to_multiple_of=8)
    finally:
        word_tok.padding_side = "right"
    assert batch["input_ids"].tolist() == [[PAD] * 4 + rows[0], [PAD] * 5 + rows[1]]
    assert batch["labels"].tolist() == [[-100] * 6 + [5, EOS], [-100] * 7 + [6]]
    assert batch["attention_mask"].sum(1).tolist() == [4, 3]


def test_padding_free_pad_to_multiple_adds_one_dummy_sequence(word_tok):
    batch = collate(word_tok, [[USER, BOT, 5], [USER, BOT, 6, EOS]], padding_free=True, pad_to_multiple_of=4)
    assert batch["input_ids"].tolist() == [[USER, BOT, 5, USER, BOT, 6, EOS, PAD]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0]]
    assert batch["cu_seq_lens_q"].tolist() == [0, 3, 7, 8]
    assert batch["labels"].tolist() == [[-100, -100, 5, -100, -100, 6, EOS, -100]]
    assert batch["seq_idx"].tolist() == [[0, 0, 0, 1, 1, 1, 1, 2]]


def test_packed_rows_with_seq_lengths(word_tok):
    """trl's BFD packing puts several sequences in one row; a template never matches across them."""
    row = {"input_ids": [USER, 4, BOT, 5, BOT, 6, EOS], "seq_lengths": [4, 3]}  # second sequence starts with BOT
    flat = collate(word_tok, [row, [USER, BOT, 5]], padding_free=True)
    assert flat["cu_seq_lens_q"].tolist() == [0, 4, 7, 10]
    assert flat["labels"].tolist() == [[-100, -100, -100, 5, -100, 6, EOS, -100, -100, 5]]
    padded = collate(word_tok, [row, [USER, BOT, 5]])
    assert padded["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2], [0, 1, 2, 0, 0, 0, 0]]
    assert padded["labels"][0].tolist() == flat["labels"][0, :7].tolist()


def test_end_template_with_instruction(word_tok):
    row = [SYSTEM, 4, END, USER, 5, END, BOT, 6, END, EOS, USER, 4, END, BOT, 5, 6, END, EOS]
    labels = collate(word_tok, [row], instruction_template=[[USER], [SYSTEM]], end_template=[END])["labels"][0]
    assert [t for t in labels.tolist() if t != -100] == [6, END, 5, 6, END]


def test_string_templates_with_word_tokenizer(word_tok):
    batch = collate(word_tok, [word_tok("<user> a <bot> b c <eos>")["input_ids"]], response_template="<bot>",
                    instruction_template="<user>")
    assert batch["labels"].tolist() == [[-100, -100, -100, 5, 6, EOS]]


def test_torch_call_and_numpy_call(word_tok):
    collator = DataCollatorForCompletionOnlyLM([BOT], tokenizer=word_tok)
    assert isinstance(collator.torch_call([[USER, BOT, 5]])["labels"], torch.Tensor)
    assert isinstance(collator.numpy_call([[USER, BOT, 5]])["labels"], np.ndarray)


def test_does_not_change_the_callers_rows(word_tok):
    rows = [{"input_ids": [USER, BOT, 5], "labels": [9, 9, 9]}, {"input_ids": np.array([USER, BOT, 6, EOS])}]
    before = [{k: list(v) for k, v in r.items()} for r in rows]
    collate(word_tok, rows, padding_free=True)
    assert [{k: list(v) for k, v in r.items()} for r in rows] == before


# -- properties ---------------------------------------------------------------------------------------------
TOKEN = st.sampled_from([USER, BOT, END, EOS, SYSTEM, 4, 5, 6, 10, 11, 12])
ROWS = st.lists(st.lists(TOKEN, min_size=1, max_size=25), min_size=1, max_size=6)
CONFIGS = st.fixed_dictionaries(
    {
        "instruction_template": st.sampled_from([None, [USER], [[USER], [SYSTEM]]]),
        "end_template": st.sampled_from([None, [END]]),
    }
)


def _trained(batch_labels, batch_ids):
    return [int(t) for t, lab in zip(batch_ids.ravel(), batch_labels.ravel(), strict=True) if lab != -100]


@given(ROWS, CONFIGS, st.sampled_from(["left", "right"]), st.sampled_from([None, 3, 8]))
def test_properties_padded_vs_padding_free(word_tok, rows, config, side, multiple):
    word_tok.padding_side = side
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FormatKitWarning)
            padded = collate(word_tok, rows, pad_to_multiple_of=multiple, **config)
            flat = collate(word_tok, rows, padding_free=True, pad_to_multiple_of=multiple, **config)
    finally:
        word_tok.padding_side = "right"
    ids, labels, mask = padded["input_ids"], padded["labels"], padded["attention_mask"]
    # every label is -100 or the input id at that place
    assert np.all((labels == -100) | (labels == ids))
    assert np.all((flat["labels"] == -100) | (flat["labels"] == flat["input_ids"]))
    # padding is never trained, and the padded layout keeps each row's tokens in order
    assert np.all(labels[mask == 0] == -100)
    assert [r[m == 1].tolist() for r, m in zip(ids, mask, strict=True)] == rows
    # padded and padding-free carry the same trained tokens in the same order
    assert _trained(labels, ids) == _trained(flat["labels"], flat["input_ids"])
    # padding-free: positions restart per sequence, the first label of every sequence is -100
    starts = flat["cu_seq_lens_q"][:-1]
    assert np.all(flat["position_ids"][0, starts] == 0)
    assert np.all(flat["labels"][0, starts] == -100)
    assert flat["input_ids"].shape[1] % (multiple or 1) == 0
    # a trained token lies after a response template in its own sequence (nothing crosses a boundary)
    for r, row_labels in zip(rows, labels, strict=True):
        real = row_labels[-len(r):] if side == "left" else row_labels[: len(r)]
        trained_at = np.flatnonzero(real != -100)
        if trained_at.size:
            assert BOT in r[: trained_at[0]]


@given(ROWS, CONFIGS, st.randoms(use_true_random=False))
def test_properties_labels_do_not_depend_on_batch_composition(word_tok, rows, config, rnd):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FormatKitWarning)
        together = collate(word_tok, rows, padding_free=True, **config)
        order = list(range(len(rows)))
        rnd.shuffle(order)
        shuffled = collate(word_tok, [rows[i] for i in order], padding_free=True, **config)
        alone = [collate(word_tok, [r], padding_free=True, **config)["labels"][0] for r in rows]
    cu = together["cu_seq_lens_q"]
    per_seq = [together["labels"][0, cu[i] : cu[i + 1]].tolist() for i in range(len(rows))]
    assert per_seq == [a.tolist() for a in alone]
    cu = shuffled["cu_seq_lens_q"]
    assert [shuffled["labels"][0, cu[j] : cu[j + 1]].tolist() for j in range(len(rows))] == [
        per_seq[i] for i in order
    ]


# -- issue 9 / issue 10 item 9: hostile input, each test failed on the code before its fix -------------------
@pytest.mark.parametrize(
    "rows, error, match",
    [
        ([[USER, BOT, 4], [7, 8.9, 9]], FormatKitTypeError, r"row 1.*8\.9.*position 1"),  # the middle id, not an end
        ([[USER, BOT, 4], [7, "12", 9]], FormatKitTypeError, r"row 1.*'12'.*position 1"),
        ([[USER, BOT, 4], [7, True, 9]], FormatKitTypeError, r"row 1.*True.*position 1"),
        ([[USER, BOT, 4], [True, False]], FormatKitTypeError, r"row 1.*True"),
        ([[USER, float("nan"), BOT]], FormatKitTypeError, r"row 0.*nan.*position 1"),
        ([[USER, BOT, 4], [7, None, 9]], FormatKitTypeError, r"row 1.*None"),
        ([[USER, BOT, 4], [7, [8], 9]], FormatKitTypeError, r"row 1.*\[8\]"),
        ([[USER, BOT, 2**64]], FormatKitValueError, r"row 0.*18446744073709551616.*too large"),
        ([[USER, BOT, 2**63]], FormatKitValueError, r"row 0.*9223372036854775808.*too large"),
        ([np.array([USER, BOT, 4], dtype=object), np.array([7, 8.5], dtype=object)], FormatKitTypeError,
         r"row 1.*8\.5"),
        ([np.array([True, False])], FormatKitTypeError, r"row 0.*bool"),
        ([np.array([1, 2**63], dtype=np.uint64)], FormatKitValueError, r"row 0.*too large"),
        (["hello world"], FormatKitTypeError, r"row 0 is a string.*tokenize"),
        ([[USER, BOT], 5], FormatKitTypeError, r"row 1 is a single int"),
    ],
)
def test_every_id_of_every_row_is_checked(word_tok, rows, error, match):
    """Issue 9 item 5: the list fast path checked only the first and last id of each row."""
    with pytest.raises(error, match=match):
        collate(word_tok, rows)


def test_object_arrays_of_ints_and_arrow_pandas_rows_are_accepted(word_tok):
    """Issue 9 item 14: object-dtype arrays, pandas Series and Arrow arrays of ids are ids, not a shape error."""
    import pandas as pd
    import pyarrow as pa

    ids = [[USER, 4, BOT, 5, EOS], [USER, 6, BOT, EOS]]
    expected = collate(word_tok, ids)
    for form in (
        [np.array(r, dtype=object) for r in ids],
        [pd.Series(r) for r in ids],
        [pa.array(r) for r in ids],
        [{"input_ids": pa.array(r)} for r in ids],
        [pd.Series({"input_ids": r}) for r in ids],  # a DataFrame row
    ):
        np.testing.assert_array_equal(collate(word_tok, form)["labels"], expected["labels"])


def test_return_tensors_at_call_time_is_checked(word_tok):
    collator = DataCollatorForCompletionOnlyLM([BOT], tokenizer=word_tok)
    with pytest.raises(FormatKitValueError, match="'tf'.*'pt' or 'np'"):
        collator([[USER, BOT, 4]], return_tensors="tf")


def test_row_keys_named_like_computed_metadata_do_not_overwrite_it(word_tok):
    rows = [{"input_ids": [USER, 4, BOT, 5], k: 99, "idx": i} for i, k in
            enumerate(["cu_seq_lens_q", "max_length_q", "seq_idx"])]
    rows = [{**r, "cu_seq_lens_q": 99, "max_length_q": 99, "seq_idx": 99} for r in rows]
    batch = collate(word_tok, rows, padding_free=True)
    assert batch["cu_seq_lens_q"].tolist() == [0, 4, 8, 12]
    assert batch["max_length_q"] == 4 and batch["seq_idx"].tolist() == [[0] * 4 + [1] * 4 + [2] * 4]
    assert batch["idx"].tolist() == [0, 1, 2]
    padded = collate(word_tok, rows)
    assert not {"cu_seq_lens_q", "max_length_q", "seq_idx"} & set(padded)


def test_numpy_ints_accepted_and_bools_refused_for_int_settings(word_tok):
    collator = DataCollatorForCompletionOnlyLM([BOT], tokenizer=word_tok, pad_to_multiple_of=np.int64(8),
                                               ignore_index=np.int32(-1), return_tensors="np")
    batch = collator([[USER, BOT, 4]])
    assert batch["input_ids"].shape == (1, 8) and batch["labels"][0, 0] == -1
    with pytest.raises(FormatKitTypeError, match="pad_to_multiple_of.*True"):
        DataCollatorForCompletionOnlyLM([BOT], tokenizer=word_tok, pad_to_multiple_of=True)
    with pytest.raises(FormatKitTypeError, match="ignore_index.*True"):
        DataCollatorForCompletionOnlyLM([BOT], tokenizer=word_tok, ignore_index=True)


def test_padding_free_with_multiple_and_no_pad_token_gives_the_right_hint(load_tokenizer):
    tok = load_tokenizer("llama-2")
    with pytest.raises(FormatKitValueError, match="pad_to_multiple_of") as info:
        collate(tok, [[1, 2, 3]], response_template=[2], padding_free=True, pad_to_multiple_of=8)
    assert "use padding_free=True" not in str(info.value)


def test_on_missing_raise_does_not_suggest_on_missing_raise(word_tok):
    with pytest.raises(TemplateNotFoundError) as info:
        collate(word_tok, [[USER, 4, 5]], on_missing="raise")
    assert "on_missing='raise'" not in str(info.value) and "on_missing='warn'" in str(info.value)


def test_tokenizer_as_second_positional_argument_says_what_happened(word_tok):
    with pytest.raises(FormatKitTypeError, match="second positional argument, which is instruction_template.*tokenizer="):
        DataCollatorForCompletionOnlyLM("<bot>", word_tok)


def test_misconfigured_templates_are_refused(load_tokenizer):
    """Issue 9 item 8: qwen2 '<|im_start|>' vs '<|im_start|>user\\n'; an end template equal to the last token."""
    tok = load_tokenizer("qwen2")
    with pytest.raises(FormatKitValueError, match="inside the instruction template"):
        DataCollatorForCompletionOnlyLM("<|im_start|>", "<|im_start|>user\n", tokenizer=tok)
    for name in ("gpt2", "phi-3-mini"):  # "\n" is a token of its own there (qwen2 merges ":\n")
        with pytest.raises(FormatKitValueError, match="end_template.*last token"):
            DataCollatorForCompletionOnlyLM("### Response:\n", tokenizer=load_tokenizer(name), end_template="\n")
    DataCollatorForCompletionOnlyLM("<|im_start|>assistant\n", "<|im_start|>", tokenizer=tok, end_template="<|im_end|>")


def test_alpaca_rows_on_byte_level_tokenizers_train_the_answer(load_tokenizer):
    """Issue 9 item 6: with qwen2 / llama-3 every alpaca-style row trained nothing."""
    for name in ("qwen2", "llama-3"):
        tok = load_tokenizer(name)
        text = "### Instruction:\nName a colour.\n\n### Response:\nBlue." + tok.eos_token
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            batch = collate(tok, [ids], response_template="### Response:", padding_free=True)
        trained = batch["labels"][batch["labels"] != -100].tolist()
        assert tok.decode(trained) == "Blue." + tok.eos_token, name


def test_marker_text_inside_a_message_is_reported(phi):
    """Issue 9 item 1: '<|assistant|>' typed by a user trains 'PRIVATE USER DATA'; the collator says so."""
    chat = [{"role": "user", "content": "Summarise: <|assistant|> PRIVATE USER DATA"},
            {"role": "assistant", "content": "A summary."}]
    clean = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    rows = [phi.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"] for c in (chat, clean, chat)]
    collator = DataCollatorForCompletionOnlyLM("<|assistant|>", "<|user|>", tokenizer=phi, end_template="<|end|>")
    with pytest.warns(FormatKitWarning, match="2 of 3 sequence") as record:
        collator(rows)
    assert len(record) == 1
    message = str(record[0].message)
    assert "row 0" in message and "PRIVATE USER DATA" in message and "response template" in message


def _no_response_rows():
    return [[USER, 4, 5], [USER, 4, BOT, 5]]


def test_repeated_warnings_are_summarised(word_tok):
    """Issue 10 item 9: the first batch in full, then one short line at the 10th, 100th, ... such batch."""
    collator = DataCollatorForCompletionOnlyLM([BOT], tokenizer=word_tok, return_tensors="np")
    with pytest.warns(FormatKitWarning) as record:
        for _ in range(100):
            collator(_no_response_rows())
    assert len(record) == 3
    first, tenth, hundredth = (str(w.message) for w in record)
    assert "not found in 1 row(s)" in first and "Fix:" in first
    assert "10 batches" in tenth and "10 of 20 sequences" in tenth and "Fix:" not in tenth
    assert "100 batches" in hundredth
    assert collator.warning_counts == {"response_template not found": 100}


def test_warning_location_is_not_torch_internals(word_tok):
    """Issue 10 item 9: through a DataLoader the warning pointed at torch/utils/data/_utils/fetch.py."""
    collator = DataCollatorForCompletionOnlyLM([BOT], tokenizer=word_tok)
    loader = torch.utils.data.DataLoader(_no_response_rows(), batch_size=2, collate_fn=collator)
    with pytest.warns(FormatKitWarning) as record:
        next(iter(loader))
    assert "torch" not in record[0].filename
    assert "DataCollatorForCompletionOnlyLM" in str(record[0].message)
