"""Differential tests: our ``DataCollatorForCompletionOnlyLM`` against trl 0.19.1's original, batch for batch.

trl removed the collator in 0.20, so the original runs in its own interpreter (``../ref-venv`` beside the checkout: trl 0.19.1,
transformers 4.53, or ``FORMATKIT_REF_PYTHON``) through ``tests/reference/run_trl019.py``. Token ids are made
once, here, by the project's tokenizers, and fed identically to both collators; the reference loads a copy of the
same tokenizer (its ``tokenizer_class`` set to a class transformers 4.x knows) only to encode string templates and
for the pad id. All cases go to the reference in one subprocess (importing trl 0.19 takes seconds).

This is a dev-time check: it is skipped, with the reason, where the reference interpreter or the tokenizers are
absent (CI does not build the reference venv).

What must agree:

- ``match_in_context=False`` reproduces trl 0.19 exactly: ``input_ids``, ``attention_mask``, ``labels``,
  ``position_ids`` and ``cu_seq_lens_q/k`` / ``max_length_q/k`` values, up to the intended differences below.
- The default (``match_in_context=True``) agrees wherever the templates tokenize the same in context as alone:
  every chat rendered by the phi-3-mini and qwen2 chat templates, and the book's cases except the llama-2 one.

Intended differences (each has its own test):

1. trl 0.19 sets ``labels[input_ids == pad_token_id] = -100`` (inherited from transformers'
   ``DataCollatorForLanguageModeling``), so with PAD == EOS the EOS is never trained and the model never learns to
   stop. Ours masks padding by length: the EOS keeps its label.
2. ``match_in_context=True`` finds a template that tokenizes differently inside text (llama-2 ``"### Assistant:"``
   after a newline), where trl 0.19 trained nothing.
3. Shapes of the padding-free extras: trl 0.19 returns ``cu_seq_lens_q`` of shape ``(1, n + 1)`` and
   ``max_length_q`` as a 1-element tensor; ours follow trl 1.x and transformers (``(n + 1,)`` int32 and a Python
   int) and add ``seq_idx``. Values are equal.
4. Warnings: trl 0.19 warns once per row (``UserWarning``), and twice for a multi-turn row without the response
   template (it then searches the instruction template in labels it has just blanked, and reports it missing too);
   ours warns once per batch (``FormatKitWarning``), naming the row count. The rows left untrained are the same.
"""

from __future__ import annotations

import itertools
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import ref_tokenizer_folders, run_trl019

from trl_formatkit import DataCollatorForCompletionOnlyLM
from trl_formatkit.errors import FormatKitWarning

REPO_ROOT = Path(__file__).resolve().parent.parent
RUNNER = REPO_ROOT / "tests" / "reference" / "run_trl019.py"

# transformers 4.x cannot resolve the "TokenizersBackend"/"Qwen2Tokenizer" classes the shared configs name
REF_TOKENIZER_CLASS = {
    "phi-3-mini": "LlamaTokenizerFast",
    "llama-2": "LlamaTokenizerFast",
    "qwen2": "PreTrainedTokenizerFast",
}

# -- the book's printed facts (shared/seeds/003_08e0fccea0e027a9.txt) ------------------------------------------
from book_facts import DUMMY_CHAT, DUMMY_IDS, LLAMA_IDS, LLAMA_PROMPT, LLAMA_SPECIAL_IDS, YODA_IDS, YODA_TEXTS


@dataclass
class Case:
    """One batch for both collators."""

    id: str
    tokenizer: str  # shared tokenizer folder name
    rows: list[list[int]]
    collator: dict[str, Any]  # response_template, instruction_template, padding_free
    pad_token: str | None = None  # None: the tokenizer's own
    padding_side: str | None = None  # None: the tokenizer's own
    special_tokens: list[str] = field(default_factory=list)
    in_context_agrees: bool = True  # the default match_in_context=True must give trl's batch too


# -- generated chats -------------------------------------------------------------------------------------------
WORDS = (
    "the a of to and in is it you that was for on are with as I his they be at one have this from or had by hot "
    "word but what some we can out other were all there when up use your how said an each she which do their time "
    "if will way about many then them write would like so these her long make thing see him two has look more day "
    "could go come did number sound no most people my over know water than call first who may down side been now "
    "find any new work part take get place made live where after back little only round man year came show every "
    "good me give our under name very through just form sentence great think say help low line differ turn cause "
    "much mean before move right boy old too same tell does set three want air well also play small end put home "
    "read hand port large spell add even land here must big high such follow act why ask men change went light "
    "kind off need house picture try us again animal point mother world near build self earth father Yoda Force "
    "Jedi café naïve 42 3.14 x=1 don't can't it's"
).split()


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(1, 18))]
    text = " ".join(words)
    text = text[0].upper() + text[1:] + rng.choice([".", "?", "!", "", ":", "..."])
    if rng.random() < 0.15:  # a second line inside one message
        text += "\n" + " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6)))
    return text


def generate_chats(seed: int, n: int, *, system: bool) -> list[list[dict[str, str]]]:
    """Regular user/assistant alternation, 1-4 exchanges; one chat in eight ends on an unanswered user turn."""
    rng = random.Random(seed)
    chats = []
    for _ in range(n):
        messages = [{"role": "system", "content": _sentence(rng)}] if system else []
        for _ in range(rng.randint(1, 4)):
            messages.append({"role": "user", "content": _sentence(rng)})
            messages.append({"role": "assistant", "content": _sentence(rng)})
        if rng.random() < 0.125:
            messages.append({"role": "user", "content": _sentence(rng)})
        chats.append(messages)
    return chats


# response / instruction templates per chat template
CHAT_TEMPLATES = {
    "phi-3-mini": ("<|assistant|>", "<|user|>"),
    "qwen2": ("<|im_start|>assistant\n", "<|im_start|>user\n"),
}


def _render(tok, chats) -> list[list[int]]:
    texts = [tok.apply_chat_template(chat, tokenize=False) for chat in chats]
    return [tok(text, add_special_tokens=False)["input_ids"] for text in texts]


def build_cases(tokenizers: dict[str, Any]) -> list[Case]:
    phi, llama = tokenizers["phi-3-mini"], tokenizers["llama-2"]
    assert [phi(t)["input_ids"] for t in YODA_TEXTS] == YODA_IDS, "phi-3-mini no longer tokenizes like the book"
    assert phi(DUMMY_CHAT)["input_ids"] == DUMMY_IDS
    assert llama(LLAMA_PROMPT)["input_ids"] == LLAMA_IDS
    book = {"pad_token": "<unk>", "padding_side": "left"}  # the book: tokenizer_phi.pad_token = unk_token
    cases = [
        Case("book-yoda", "phi-3-mini", YODA_IDS, {"response_template": "<|assistant|>"}, **book),
        Case("book-yoda-padding-free", "phi-3-mini", YODA_IDS,
             {"response_template": "<|assistant|>", "padding_free": True}, **book),
        Case("book-yoda-pad-is-eos", "phi-3-mini", YODA_IDS, {"response_template": "<|assistant|>"}),
        Case("book-dummy-chat", "phi-3-mini", [DUMMY_IDS], {"response_template": "<|assistant|>"}, **book),
        Case("book-dummy-chat-instruction", "phi-3-mini", [DUMMY_IDS],
             {"response_template": "<|assistant|>", "instruction_template": "<|user|>"}, **book),
        Case("book-llama-bad", "llama-2", [LLAMA_IDS], {"response_template": "### Assistant:"}, pad_token="<unk>",
             in_context_agrees=False),
        Case("book-llama-fixed", "llama-2", [LLAMA_IDS], {"response_template": [2277, 29937, 4007, 22137, 29901]},
             pad_token="<unk>"),
        Case("book-llama-special", "llama-2", [LLAMA_SPECIAL_IDS], {"response_template": "### Assistant:"},
             pad_token="<unk>", special_tokens=["### Assistant:"]),
    ]
    seed = 0
    for name, (response, instruction) in CHAT_TEMPLATES.items():
        tok = tokenizers[name]
        for system in (False, True):
            for multi in (True, False):
                for side in ("left", "right"):
                    for free in (False, True):
                        seed += 1
                        rows = _render(tok, generate_chats(seed, 8, system=system))
                        config = {"response_template": response, "padding_free": free}
                        if multi:
                            config["instruction_template"] = instruction
                        pad = "<unk>" if name == "phi-3-mini" else None  # qwen2 keeps PAD == EOS (<|endoftext|>)
                        case_id = (f"{name}-{'system' if system else 'nosystem'}-{'multi' if multi else 'single'}-"
                                   f"{'flat' if free else side}")
                        if free and side == "right":
                            continue  # padding side is irrelevant when nothing is padded
                        cases.append(Case(case_id, name, rows, config, pad_token=pad, padding_side=side))
        # PAD == EOS, the tokenizer's own setting: trl 0.19 drops the EOS label (intended difference 1)
        rows = _render(tok, generate_chats(1000 + seed, 8, system=False))
        for free in (False, True):
            cases.append(Case(f"{name}-pad-is-eos-{'flat' if free else 'padded'}", name, rows,
                              {"response_template": response, "instruction_template": instruction,
                               "padding_free": free}))
    # a batch where some rows lack the templates: both collators must leave the same rows untrained
    tok = tokenizers["phi-3-mini"]
    rows = _render(tok, generate_chats(77, 6, system=False))
    rows[1] = tok("<|user|>\nno answer here<|end|>\n<|endoftext|>", add_special_tokens=False)["input_ids"]
    rows[4] = tok("<|assistant|>\nan answer without a question<|end|>\n<|endoftext|>",
                  add_special_tokens=False)["input_ids"]
    for multi in (False, True):
        config = {"response_template": "<|assistant|>", "padding_free": False}
        if multi:
            config["instruction_template"] = "<|user|>"
        cases.append(Case(f"missing-templates-{'multi' if multi else 'single'}", "phi-3-mini", rows, config,
                          pad_token="<unk>"))
    return cases


# -- fixtures --------------------------------------------------------------------------------------------------
def _our_tokenizer(base, case: Case):
    import copy

    tok = copy.deepcopy(base)
    if case.special_tokens:
        tok.add_special_tokens({"additional_special_tokens": case.special_tokens})
    if case.pad_token is not None:
        tok.pad_token = case.pad_token
    if case.padding_side is not None:
        tok.padding_side = case.padding_side
    return tok


@pytest.fixture(scope="module")
def reference(tokenizer_path, tmp_path_factory):
    """``(cases by id, reference results by id, our tokenizer per case)``: one reference run for all cases."""
    from transformers import AutoTokenizer

    base = {name: AutoTokenizer.from_pretrained(str(tokenizer_path(name))) for name in REF_TOKENIZER_CLASS}
    cases = build_cases(base)
    root = tmp_path_factory.mktemp("ref-tokenizers")
    folders = ref_tokenizer_folders(tokenizer_path, REF_TOKENIZER_CLASS, root)
    request = {"tokenizers": folders, "cases": []}
    ours_tok, by_setup = {}, {}
    for case in cases:
        key = (case.tokenizer, case.pad_token, case.padding_side, tuple(case.special_tokens))
        if key not in by_setup:  # a deep copy of a 150k-token tokenizer costs more than the collation
            by_setup[key] = _our_tokenizer(base[case.tokenizer], case)
        tok = ours_tok[case.id] = by_setup[key]
        setup = {"pad_token": tok.pad_token, "padding_side": tok.padding_side}  # the reference mirrors ours
        if case.special_tokens:
            setup["additional_special_tokens"] = case.special_tokens
        request["cases"].append({"id": case.id, "tokenizer": case.tokenizer, "tokenizer_setup": setup,
                                 "collator": case.collator, "rows": case.rows})
    response = run_trl019(RUNNER, request, cwd=root)
    return {c.id: c for c in cases}, response["results"], ours_tok


def collate_ours(case: Case, tok, **kwargs) -> tuple[dict[str, Any], list[str], DataCollatorForCompletionOnlyLM]:
    """Our batch as numpy arrays, our warnings' messages (recorded, not raised), and the collator."""
    collator = DataCollatorForCompletionOnlyLM(tokenizer=tok, return_tensors="np", **case.collator, **kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = collator([{"input_ids": list(row)} for row in case.rows])
    unexpected = [w for w in caught if not issubclass(w.category, FormatKitWarning)]
    assert not unexpected, [str(w.message) for w in unexpected]
    return batch, [str(w.message) for w in caught], collator


def assert_matches_trl019(ours: dict, ref: dict, pad_id: int, padding_free: bool) -> None:
    """Equal to trl 0.19's batch, up to intended differences 1 (PAD-id labels) and 3 (extras' shapes)."""
    ids = np.asarray(ours["input_ids"])
    np.testing.assert_array_equal(ids, np.array(ref["input_ids"]), err_msg="input_ids")
    labels = np.asarray(ours["labels"])
    # trl 0.19 labels every token equal to the pad id -100; everything else is equal
    np.testing.assert_array_equal(np.where(ids == pad_id, -100, labels), np.array(ref["labels"]), err_msg="labels")
    if padding_free:
        assert "attention_mask" not in ours and "attention_mask" not in ref
        np.testing.assert_array_equal(ours["position_ids"], np.array(ref["position_ids"]), err_msg="position_ids")
        for key in ("cu_seq_lens_q", "cu_seq_lens_k"):
            assert ours[key].ndim == 1 and ours[key].dtype == np.int32
            np.testing.assert_array_equal(ours[key], np.array(ref[key])[0], err_msg=key)  # ref: shape (1, n + 1)
        for key in ("max_length_q", "max_length_k"):
            assert isinstance(ours[key], int) and [ours[key]] == ref[key], key
    else:
        np.testing.assert_array_equal(ours["attention_mask"], np.array(ref["attention_mask"]),
                                      err_msg="attention_mask")
        assert "position_ids" not in ours and "position_ids" not in ref


def _case_ids() -> list[str]:
    """Case ids at collection time (generation is seeded, so these equal what build_cases makes)."""
    ids = ["book-yoda", "book-yoda-padding-free", "book-yoda-pad-is-eos", "book-dummy-chat",
           "book-dummy-chat-instruction", "book-llama-bad", "book-llama-fixed", "book-llama-special"]
    for name in CHAT_TEMPLATES:
        for system in ("nosystem", "system"):
            for multi in ("multi", "single"):
                ids += [f"{name}-{system}-{multi}-{how}" for how in ("left", "flat", "right")]
        ids += [f"{name}-pad-is-eos-padded", f"{name}-pad-is-eos-flat"]
    return ids + ["missing-templates-single", "missing-templates-multi"]


CASE_IDS = _case_ids()


# -- tests -----------------------------------------------------------------------------------------------------
def test_case_list_matches_collection(reference):
    cases, results, _ = reference
    assert sorted(cases) == sorted(CASE_IDS) == sorted(results)


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_exact_mode_matches_trl019(reference, case_id):
    """``match_in_context=False``: trl 0.19's batch, token for token."""
    cases, results, toks = reference
    case, ref, tok = cases[case_id], results[case_id], toks[case_id]
    ours, our_warnings, collator = collate_ours(case, tok, match_in_context=False)
    assert ref["pad_token_id"] == tok.pad_token_id and ref["padding_side"] == tok.padding_side
    assert collator.response_token_ids == ref["response_token_ids"]
    assert collator.instruction_token_ids == ref["instruction_token_ids"]
    free = case.collator.get("padding_free", False)
    assert_matches_trl019(ours, ref, tok.pad_token_id, free)
    if case_id != "book-llama-bad" and not case_id.startswith("missing-"):  # agreement on something, not nothing
        assert all(_trained_rows(ref["labels"], free, ref.get("position_ids"))), "a sequence trains nothing"
    # intended difference 4: same untrained rows, warned about once per batch instead of once per row
    ref_missing = [w for w in ref["warnings"] if "Could not find" in w]
    assert bool(our_warnings) == bool(ref_missing), (our_warnings, ref["warnings"])


@pytest.mark.parametrize("case_id", [c for c in CASE_IDS if c != "book-llama-bad"])
def test_default_mode_agrees_with_trl019(reference, case_id):
    """The default (templates also found in context) gives the same batch wherever trl 0.19 found them."""
    cases, results, toks = reference
    case, ref, tok = cases[case_id], results[case_id], toks[case_id]
    assert case.in_context_agrees
    ours, _, _ = collate_ours(case, tok)
    assert_matches_trl019(ours, ref, tok.pad_token_id, case.collator.get("padding_free", False))


def _trained_rows(labels: np.ndarray, padding_free: bool, position_ids=None) -> list[list[int]]:
    """The trained label ids of each sequence."""
    labels = np.asarray(labels)
    if not padding_free:
        return [row[row != -100].tolist() for row in labels]
    starts = np.flatnonzero(np.asarray(position_ids)[0] == 0).tolist() + [labels.shape[1]]
    return [labels[0, a:b][labels[0, a:b] != -100].tolist() for a, b in itertools.pairwise(starts)]


def test_book_outputs(reference):
    """The chapter's printed outputs, from both collators."""
    cases, results, toks = reference
    phi = toks["book-yoda"]
    yoda = results["book-yoda"]
    assert np.array(yoda["input_ids"])[1, :10].tolist() == [0] * 10  # left-padded with PAD = <unk> = 0
    labels = np.array(yoda["labels"])[0]
    assert phi.decode(labels[labels >= 0]) == "On the smooth planks, the birch canoe slid. Yes, hrrrm.<|end|><|endoftext|>"
    flat = results["book-yoda-padding-free"]
    assert np.array(flat["input_ids"]).shape == (1, 66) and max(flat["position_ids"][0]) + 1 == 38
    ours, _, _ = collate_ours(cases["book-yoda-padding-free"], toks["book-yoda-padding-free"])
    assert ours["input_ids"].shape == (1, 66) and int(ours["position_ids"].max()) + 1 == 38
    labels = np.array(results["book-dummy-chat"]["labels"])
    assert phi.decode(labels[labels >= 0]) == "I'm fine too!\n<|endoftext|>"
    labels = np.array(results["book-dummy-chat-instruction"]["labels"])
    assert phi.decode(labels[labels >= 0]) == "How are you?\n I'm fine too!\n<|endoftext|>"
    assert results["book-llama-bad"]["labels"] == [[-100] * 20]
    assert results["book-llama-fixed"]["labels"] == [[-100] * 12 + LLAMA_IDS[12:]]
    assert results["book-llama-special"]["labels"] == [[-100] * 8 + LLAMA_SPECIAL_IDS[8:]]


def test_intended_difference_pad_equal_to_eos_is_trained(reference):
    """Intended difference 1: with PAD == EOS, trl 0.19 never trains the EOS; ours does."""
    cases, results, toks = reference
    checked = unanswered = 0
    for case_id in ("book-yoda-pad-is-eos", "phi-3-mini-pad-is-eos-padded", "phi-3-mini-pad-is-eos-flat"):
        case, ref, tok = cases[case_id], results[case_id], toks[case_id]
        assert tok.pad_token_id == tok.eos_token_id == 32000
        free = case.collator.get("padding_free", False)
        ours, _, _ = collate_ours(case, tok)
        for ours_row, ref_row, row in zip(_trained_rows(ours["labels"], free, ours.get("position_ids")),
                                          _trained_rows(ref["labels"], free, ref.get("position_ids")),
                                          case.rows, strict=True):
            assert row[-1] == tok.eos_token_id
            assert tok.eos_token_id not in ref_row  # trl 0.19: the model never learns to stop
            last_turn = [t for t in row if t in (32001, 32010)][-1]  # <|assistant|> or <|user|>
            if last_turn == 32010:  # the chat ends on an unanswered user turn: its EOS is prompt, for both
                assert ours_row == ref_row
                unanswered += 1
                continue
            assert ours_row == ref_row + [tok.eos_token_id]  # ours: the EOS after the answer is trained
            checked += 1
    assert checked >= 2 + 2 * 6 and checked + unanswered == 2 + 8 + 8


def test_intended_difference_template_found_in_context(reference):
    """Intended difference 2: the book's "bad" llama-2 collator trains nothing in trl 0.19; ours finds the
    template as it tokenizes after a newline and trains the answer."""
    cases, results, toks = reference
    case, ref, tok = cases["book-llama-bad"], results["book-llama-bad"], toks["book-llama-bad"]
    assert any("Could not find response key" in w for w in ref["warnings"])
    ours, our_warnings, _ = collate_ours(case, tok)
    assert our_warnings == []
    assert ours["labels"].tolist() == [[-100] * 12 + LLAMA_IDS[12:]]  # what the book's "fixed" collator gives
    assert tok.decode(LLAMA_IDS[12:]) == "Hi, how can I help you?"
    _, exact_warnings, _ = collate_ours(case, tok, match_in_context=False)
    assert len(exact_warnings) == 1 and "match_in_context=True" in exact_warnings[0]


@pytest.mark.parametrize("case_id", ["missing-templates-single", "missing-templates-multi"])
def test_rows_without_templates_are_the_same_rows(reference, case_id):
    """Intended difference 4: one warning per batch (ours) instead of one per row, for the same rows."""
    cases, results, toks = reference
    case, ref, tok = cases[case_id], results[case_id], toks[case_id]
    ours, our_warnings, _ = collate_ours(case, tok)
    ref_untrained = [i for i, row in enumerate(ref["labels"]) if set(row) == {-100}]
    ours_untrained = [i for i, row in enumerate(ours["labels"].tolist()) if set(row) == {-100}]
    assert ours_untrained == ref_untrained
    expected = [1] if "single" in case_id else [1, 4]  # row 4 has no user turn: trl ignores it with a template
    assert ref_untrained == expected
    ref_row_warnings = [w for w in ref["warnings"] if "Could not find" in w]
    # trl 0.19 quirk: for a row without the response template in multi-turn mode it also warns "Could not find
    # instruction key", because it searches the labels it has just set to -100 (row 1 does contain <|user|>)
    assert len(ref_row_warnings) == (1 if "single" in case_id else 3)
    assert len(our_warnings) == 1 and f"{len(expected)} of {len(case.rows)} sequence(s)" in our_warnings[0]
