"""``ConstantLengthDataset``: trl 0.19's rows for trl 0.19's inputs, boundaries on request, clear errors.

The differential tests run trl 0.19.1's original class in the reference interpreter (``../ref-venv``, through
``tests/reference/run_trl019_packing.py``; skipped with the reason where it is absent) on the same rows and the same
``random`` seed, and compare every yielded row. Text rows go through each side's own tokenizer, so each case first
checks that transformers 4.x and 5.x tokenize those rows alike (a tokenizer difference is not a packing one).
"""

from __future__ import annotations

import itertools
import random
import warnings
from pathlib import Path

import pytest
from book_facts import BOOK_PACKED_FIRST_ROW, YODA_TEXTS
from helpers import ref_tokenizer_folders, run_python_json, run_trl019
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from trl_formatkit.errors import FormatKitError, FormatKitKeyError, FormatKitTypeError, FormatKitValueError  # noqa: E402
from trl_formatkit.errors import FormatKitWarning  # noqa: E402
from trl_formatkit.packing import ConstantLengthDataset, join_documents, rows_from_tokens  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNNER = REPO_ROOT / "tests" / "reference" / "run_trl019_packing.py"
REF_TOKENIZER_CLASS = {"gpt2": "GPT2TokenizerFast", "phi-3-mini": "LlamaTokenizerFast", "llama-2": "LlamaTokenizerFast"}
WORDS = ("the a of to and in is it you that was for on are with as I his they be at one have this from or had by "
         "Yoda Force Jedi café naïve 42 3.14 x=1 don't").split()


def qa_formatting(row: dict) -> str:
    """Same as the reference runner's ``qa_formatting``."""
    return f"### Question: {row['question']}\n### Answer: {row['answer']}"


def _texts(seed: int, n: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizers(tokenizer_path):
    from transformers import AutoTokenizer

    return {name: AutoTokenizer.from_pretrained(str(tokenizer_path(name))) for name in REF_TOKENIZER_CLASS}


def _rows(packed, seed: int = 0, take: int | None = None) -> list[dict]:
    random.seed(seed)
    return list(itertools.islice(packed, take))


# -- the book ----------------------------------------------------------------------------------------------------
def test_book_first_packed_row(tokenizers):
    """In [54]/[55]: the yoda texts packed to 64 tokens, not shuffled; the first row decodes as the book printed."""
    phi = tokenizers["phi-3-mini"]
    packed = ConstantLengthDataset(phi, [{"text": t} for t in YODA_TEXTS * 3], dataset_text_field="text",
                                   seq_length=64, shuffle=False)
    rows = _rows(packed)
    assert phi.decode(rows[0]["input_ids"]) == BOOK_PACKED_FIRST_ROW
    assert sorted(rows[0]) == ["input_ids", "labels"]  # trl 0.x's keys, unchanged by default
    assert all(r["input_ids"].dtype == torch.int64 and r["input_ids"].shape == (64,) for r in rows)
    assert all(torch.equal(r["input_ids"], r["labels"]) for r in rows)
    assert len(packed) == len(rows) == (38 + 28 + 2) * 3 // 64


# -- pure helpers ------------------------------------------------------------------------------------------------
@given(lengths=st.lists(st.integers(0, 30), min_size=1, max_size=12), seq_length=st.integers(1, 25),
       concat=st.booleans())
def test_rows_and_boundaries_match_a_plain_python_packing(lengths, seq_length, concat):
    documents = [[1000 * d + t for t in range(n)] for d, n in enumerate(lengths)]
    ids, doc_lengths = join_documents(documents, -1 if concat else None)
    stream, owner = [], []  # the obvious way: token by token
    for d, doc in enumerate(documents):
        piece = doc + ([-1] if concat else [])
        stream += piece
        owner += [d] * len(piece)
    assert ids.tolist() == stream
    rows, positions = rows_from_tokens(ids, doc_lengths, seq_length)
    n_rows = len(stream) // seq_length
    assert rows.shape == positions.shape == (n_rows, seq_length)
    for r in range(n_rows):
        assert rows[r].tolist() == stream[r * seq_length:(r + 1) * seq_length]
        for c in range(seq_length):
            i = r * seq_length + c
            expected = 0 if c == 0 or owner[i] != owner[i - 1] else positions[r, c - 1] + 1
            assert positions[r, c] == expected


def test_boundaries_on_request(tokenizers):
    gpt2 = tokenizers["gpt2"]
    data = [{"text": t} for t in _texts(1, 30)]
    kwargs = {"dataset_text_field": "text", "seq_length": 48, "shuffle": False}
    plain = _rows(ConstantLengthDataset(gpt2, data, **kwargs))
    rich = _rows(ConstantLengthDataset(gpt2, data, return_position_ids=True, return_seq_lengths=True, **kwargs))
    assert len(plain) == len(rich) > 3
    eos = gpt2.eos_token_id
    for p, r in zip(plain, rich, strict=True):
        assert torch.equal(p["input_ids"], r["input_ids"])
        pos, ids, labels = r["position_ids"], r["input_ids"], r["labels"]
        starts = (pos == 0).nonzero().flatten()
        assert starts[0] == 0
        # a document starts right after each EOS (the concatenation token) inside the row
        after_eos = (ids[:-1] == eos).nonzero().flatten() + 1
        assert set(starts[1:].tolist()) == set(after_eos.tolist())
        assert torch.equal(labels, torch.where(pos == 0, -100, ids))  # a start is never predicted across
        assert sum(r["seq_lengths"]) == 48 and len(r["seq_lengths"]) == len(starts)


# -- length ------------------------------------------------------------------------------------------------------
def test_len_is_the_number_of_rows_a_pass_yields(tokenizers):
    """trl 0.x's len() was the number of documents; schedules need the number of rows."""
    data = [{"text": t} for t in _texts(2, 200)]
    packed = ConstantLengthDataset(tokenizers["gpt2"], data, dataset_text_field="text", seq_length=32,
                                   num_of_sequences=8)
    assert len(packed) == len(_rows(packed, seed=3)) == len(_rows(packed, seed=4)) != len(data)
    loader = torch.utils.data.DataLoader(packed, batch_size=4)
    assert len(loader) == -(-len(packed) // 4) == sum(1 for _ in loader)


def test_no_length_where_none_is_known(tokenizers):
    gpt2 = tokenizers["gpt2"]
    infinite = ConstantLengthDataset(gpt2, [{"text": "hello world"}], dataset_text_field="text", infinite=True,
                                     seq_length=8)
    streamed = ConstantLengthDataset(gpt2, (r for r in [{"text": "hello"}]), dataset_text_field="text", seq_length=2)
    for packed in (infinite, streamed):
        with pytest.raises(TypeError, match="max_steps"):  # transformers' has_length() -> False: max_steps needed
            len(packed)
    rows = list(itertools.islice(infinite, 50))  # a one-row dataset repeated: never runs dry
    assert len(rows) == 50 and all(r["input_ids"].shape == (8,) for r in rows)


# -- bad input ---------------------------------------------------------------------------------------------------
def test_no_text_field_and_no_formatting_func(tokenizers):
    from datasets import Dataset

    with pytest.raises(FormatKitValueError, match=r"dataset_text_field.*formatting_func.*\['prompt'\]"):
        ConstantLengthDataset(tokenizers["gpt2"], Dataset.from_dict({"prompt": ["hi"]}))
    with pytest.raises(FormatKitKeyError, match=r"'txt'.*\['prompt'\]"):
        ConstantLengthDataset(tokenizers["gpt2"], Dataset.from_dict({"prompt": ["hi"]}), dataset_text_field="txt")


@pytest.mark.parametrize("returned", [["a", "b"], None, 3, [[1, 2], [3]], [1.5, 2.0], {"text": "hi"}])
def test_formatting_func_must_return_one_document(tokenizers, returned):
    packed = ConstantLengthDataset(tokenizers["gpt2"], [{"q": "hi"}], formatting_func=lambda row: returned)
    with pytest.raises(FormatKitTypeError, match=r"for row \{'q': 'hi'\}.*ONE row and returns ONE string"):
        next(iter(packed))


def test_mixed_strings_and_ids_is_an_error(tokenizers):
    data = [{"x": "some text"}, {"x": [1, 2, 3]}]
    packed = ConstantLengthDataset(tokenizers["gpt2"], data, dataset_text_field="x", seq_length=2)
    with pytest.raises(FormatKitTypeError, match="both strings and token ids"):
        list(packed)


def test_eos_token_id_out_of_range(load_tokenizer):
    tok = load_tokenizer("gpt2")
    tok.eos_token = None
    for eos in (-1, 50257, 10**9, True, "2"):
        with pytest.raises(FormatKitValueError, match=r"eos_token_id=.* not a token id of this tokenizer \(0 <= id < 50257\)"):
            ConstantLengthDataset(tok, [{"t": "a"}], dataset_text_field="t", eos_token_id=eos)


def test_no_eos_and_a_plain_concat_token_warns(load_tokenizer):
    tok = load_tokenizer("gpt2")
    tok.eos_token = None
    with pytest.warns(FormatKitWarning, match=r"no EOS token.*eos_token_id=0 \('!'\)"):
        ConstantLengthDataset(tok, [{"t": "a"}], dataset_text_field="t")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ConstantLengthDataset(tok, [{"t": "a"}], dataset_text_field="t", eos_token_id=50256)  # a special token


@pytest.mark.parametrize("name,value", [("seq_length", 0), ("num_of_sequences", -1), ("seq_length", 2.5),
                                        ("chars_per_token", 0), ("seq_length", True)])
def test_sizes_must_be_positive(tokenizers, name, value):
    with pytest.raises(FormatKitValueError, match=name):
        ConstantLengthDataset(tokenizers["gpt2"], [{"t": "a"}], dataset_text_field="t", **{name: value})


def test_too_little_data_for_one_row_is_an_error_not_an_empty_run(tokenizers):
    packed = ConstantLengthDataset(tokenizers["gpt2"], [{"t": "hello world"}], dataset_text_field="t",
                                   seq_length=64)
    with pytest.raises(FormatKitValueError, match=r"no row: the dataset holds 3 tokens.*seq_length=64"):
        list(packed)
    empty = ConstantLengthDataset(tokenizers["gpt2"], [], dataset_text_field="t", infinite=True)
    with pytest.raises(FormatKitValueError, match="empty dataset"):
        next(iter(empty))


def test_both_field_and_func_warn_and_func_wins(tokenizers):
    with pytest.warns(FormatKitWarning, match="Ignoring `dataset_text_field`"):
        packed = ConstantLengthDataset(tokenizers["gpt2"], [{"t": "a b c d"}], dataset_text_field="t",
                                       formatting_func=lambda row: row["t"].upper(), seq_length=2, shuffle=False)
    assert tokenizers["gpt2"].decode(next(iter(packed))["input_ids"]) == "A B"


def test_a_pass_that_drops_much_says_so_once(tokenizers):
    data = [{"t": "one two three four five"}] * 6  # 5 tokens + EOS per document, one document per buffer
    packed = ConstantLengthDataset(tokenizers["gpt2"], data, dataset_text_field="t", seq_length=4,
                                   num_of_sequences=1, chars_per_token=1, shuffle=False)
    with pytest.warns(FormatKitWarning, match=r"dropped 12 of 36 tokens \(33%\) over 6 buffers.*num_of_sequences"):
        assert len(list(packed)) == 6
    assert (packed.tokens_packed, packed.tokens_dropped) == (24, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(packed)  # said once


def test_errors_are_formatkit_errors():
    assert issubclass(FormatKitValueError, (FormatKitError, ValueError))  # trl 0.x raised ValueError


# -- token ids in, DataLoader workers ------------------------------------------------------------------------------
def test_pretokenized_rows_pack_like_text(tokenizers):
    from datasets import Dataset

    gpt2 = tokenizers["gpt2"]
    texts = _texts(5, 60)
    ids = Dataset.from_dict({"input_ids": gpt2(texts)["input_ids"]})
    from_text = _rows(ConstantLengthDataset(gpt2, [{"t": t} for t in texts], dataset_text_field="t",
                                            seq_length=16, num_of_sequences=10**6, shuffle=False))
    from_ids = _rows(ConstantLengthDataset(gpt2, ids, dataset_text_field="input_ids", seq_length=16,
                                           num_of_sequences=10**6, shuffle=False))
    assert [r["input_ids"].tolist() for r in from_text] == [r["input_ids"].tolist() for r in from_ids]


def test_dataloader_workers_share_the_rows_without_repeating_them(tokenizers):
    data = [{"t": t} for t in _texts(6, 120)]
    packed = ConstantLengthDataset(tokenizers["gpt2"], data, dataset_text_field="t", seq_length=16,
                                   num_of_sequences=4, shuffle=False)
    alone = sorted(tuple(r["input_ids"].tolist()) for r in packed)
    loader = torch.utils.data.DataLoader(packed, batch_size=None, num_workers=2)
    shared = sorted(tuple(r["input_ids"].tolist()) for r in loader)
    assert shared == alone and len(alone) == len(packed) > 8


# -- trl 0.19.1's original, side by side ---------------------------------------------------------------------------
def _cases() -> list[dict]:
    rng = random.Random(9)
    qa = [{"question": t, "answer": u} for t, u in zip(_texts(7, 50), _texts(8, 50), strict=True)]
    ids = [[rng.randrange(50000) for _ in range(rng.randint(1, 30))] for _ in range(80)]
    return [
        {"id": "book-yoda", "tokenizer": "phi-3-mini", "rows": YODA_TEXTS * 20,
         "kwargs": {"dataset_text_field": "text", "seq_length": 64, "shuffle": False}},
        {"id": "gpt2-shuffled-small-buffers", "tokenizer": "gpt2", "rows": _texts(1, 150), "seed": 11,
         "kwargs": {"dataset_text_field": "text", "seq_length": 32, "num_of_sequences": 6}},
        {"id": "gpt2-no-concat-no-specials", "tokenizer": "gpt2", "rows": _texts(2, 100), "seed": 12,
         "kwargs": {"dataset_text_field": "text", "seq_length": 20, "num_of_sequences": 5,
                    "append_concat_token": False, "add_special_tokens": False}},
        {"id": "trl-crashes-on-an-empty-last-buffer", "tokenizer": "llama-2", "rows": _texts(3, 60),
         "container": "list", "seed": 13, "kwargs": {"dataset_text_field": "text", "seq_length": 24,
                                                     "num_of_sequences": 4, "chars_per_token": 2.5}},
        {"id": "llama-bos-list-container", "tokenizer": "llama-2", "rows": _texts(3, 61), "container": "list",
         "seed": 13, "kwargs": {"dataset_text_field": "text", "seq_length": 24, "num_of_sequences": 4,
                                "chars_per_token": 2.5}},
        {"id": "qa-formatting-func", "tokenizer": "gpt2", "rows": qa, "formatting": "qa", "seed": 14,
         "kwargs": {"seq_length": 40, "num_of_sequences": 8}},
        {"id": "pretokenized", "tokenizer": "gpt2", "rows": ids, "seed": 15,
         "kwargs": {"dataset_text_field": "input_ids", "seq_length": 16, "num_of_sequences": 7}},
        {"id": "infinite", "tokenizer": "gpt2", "rows": _texts(4, 10), "seed": 16, "take": 60,
         "kwargs": {"dataset_text_field": "text", "seq_length": 12, "num_of_sequences": 3, "infinite": True}},
    ]


def _ours(case: dict, tok) -> list[dict]:
    kwargs = dict(case["kwargs"])
    rows = case["rows"]
    if case.get("formatting") == "qa":
        kwargs["formatting_func"] = qa_formatting
        data = rows
    else:
        data = [{kwargs["dataset_text_field"]: row} for row in rows]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FormatKitWarning)  # dropped-tail notes: small buffers on purpose
        return _rows(ConstantLengthDataset(tok, data, **kwargs), seed=case.get("seed", 0), take=case.get("take"))


@pytest.fixture(scope="module")
def reference(tokenizer_path, tmp_path_factory):
    root = tmp_path_factory.mktemp("ref-tokenizers")
    folders = ref_tokenizer_folders(tokenizer_path, REF_TOKENIZER_CLASS, root)
    return run_trl019(RUNNER, {"tokenizers": folders, "cases": _cases()}, cwd=root)["results"]


@pytest.mark.parametrize("case", _cases(), ids=lambda case: case["id"])
def test_same_rows_as_trl019(reference, tokenizers, case):
    tok = tokenizers[case["tokenizer"]]
    ref = reference[case["id"]]
    if case["id"] == "trl-crashes-on-an-empty-last-buffer":
        # the data ends exactly where a buffer fills: trl 0.19 then tokenizes an empty buffer and raises
        assert ref["error"] == "IndexError: list index out of range"
    else:
        assert ref["error"] is None
    if ref["tokenized"] is not None:  # precondition: both transformers tokenize these rows alike
        add = case["kwargs"].get("add_special_tokens", True)
        assert tok(case["rows"], add_special_tokens=add)["input_ids"] == ref["tokenized"]
    ours = _ours(case, tok)
    assert ref["keys"] == ["input_ids", "labels"] and all(sorted(r) == ref["keys"] for r in ours)
    assert [r["input_ids"].tolist() for r in ours] == ref["input_ids"]
    assert [r["labels"].tolist() for r in ours] == ref["labels"]
    assert len(ours) > 3


def test_imports_without_trl_or_datasets():
    out = run_python_json("import json, sys\nfrom trl_formatkit import ConstantLengthDataset\n"
                          "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('trl', 'datasets'))))")
    assert out == []


# -- a real trl SFTTrainer run on the packed rows ------------------------------------------------------------------
def _tiny_llama(tok):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=32064, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         pad_token_id=tok.unk_token_id, eos_token_id=tok.eos_token_id, tie_word_embeddings=True)
    config._attn_implementation = "sdpa"  # transformers 5 keeps packed documents apart from position_ids alone
    return LlamaForCausalLM(config)


def test_trl_sft_trainer_trains_on_packed_rows_with_document_boundaries(tokenizers, tmp_path, monkeypatch):
    """The chapter's path (``Dataset.from_generator``) into trl 1.x's SFTTrainer with ``padding_free=True``:
    ``seq_lengths`` survives trl's column pruning, so the model sees positions restarting per document."""
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    phi = tokenizers["phi-3-mini"]
    texts = [phi.apply_chat_template([{"role": "user", "content": t}, {"role": "assistant", "content": u}],
                                     tokenize=False) for t, u in zip(_texts(20, 40), _texts(21, 40), strict=True)]
    packed = ConstantLengthDataset(phi, [{"text": t} for t in texts], dataset_text_field="text", seq_length=64,
                                   shuffle=False, return_seq_lengths=True)

    def data_generator(iterator):
        yield from iterator

    rows = Dataset.from_generator(data_generator, gen_kwargs={"iterator": packed}, cache_dir=str(tmp_path / "gen"))
    assert rows.column_names == ["input_ids", "labels", "seq_lengths"] and rows.num_rows == len(packed)
    model = _tiny_llama(phi)
    fed = []
    model.register_forward_pre_hook(lambda m, a, kw: fed.append({k: v for k, v in kw.items() if k != "labels"}
                                                                 | {"labels": kw["labels"]}), with_kwargs=True)
    args = SFTConfig(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, save_strategy="no",
                     max_steps=5, per_device_train_batch_size=4, learning_rate=2e-2, lr_scheduler_type="constant",
                     logging_steps=1, disable_tqdm=True, padding_free=True, max_length=None, seed=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=rows, processing_class=phi)
    trainer.train()
    first = fed[0]  # 4 rows (in the sampler's order) flattened into one
    by_ids = {tuple(ids): lengths for ids, lengths in zip(rows["input_ids"], rows["seq_lengths"], strict=True)}
    chunks = first["input_ids"][0].cpu().view(4, 64).tolist()
    expected = torch.cat([torch.arange(n) for chunk in chunks for n in by_ids[tuple(chunk)]])
    assert torch.equal(first["position_ids"][0].cpu(), expected)  # positions restart at every document
    assert (first["labels"][0][expected == 0] == -100).all()  # no document's start predicted from another
    losses = [log["loss"] for log in trainer.state.log_history if "loss" in log]
    assert losses[-1] < losses[0]
