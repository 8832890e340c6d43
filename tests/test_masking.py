"""Masking engine: template search, variants, masks; checked against a per-token reference implementation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from trl_formatkit.errors import FormatKitTypeError, FormatKitValueError
from trl_formatkit.masking import (
    IGNORE_INDEX,
    as_template_list,
    check_template_roles,
    completion_mask_from_templates,
    cu_seq_lens_from_lengths,
    find_template,
    find_template_spans,
    find_templates,
    labels_from_mask,
    pad_flat,
    position_ids_from_lengths,
    seq_idx_from_lengths,
    suspicious_responses,
    template_variants,
)


# -- a slow, obviously-correct reference of the masking rules --------------------------------------------
def occurrences(seq, variants):
    """(start, end) spans of any variant in one sequence, as a plain left-to-right scan finds them: at each
    position the longest variant that starts there, then the scan goes on after it (leftmost-longest,
    non-overlapping)."""
    spans, i = [], 0
    while i < len(seq):
        hits = [len(v) for v in variants if tuple(seq[i : i + len(v)]) == tuple(v)]
        if hits:
            spans.append((i, i + max(hits)))
            i += max(hits)
        else:
            i += 1
    return spans


def reference_mask(seq, response, instruction=(), end=()):
    seq = list(seq)
    n = len(seq)
    resp = occurrences(seq, response)
    if not instruction and not end:
        if not resp:
            return [False] * n
        last = max(e for _, e in resp)
        return [i >= last for i in range(n)]
    state = [None] * (n + 1)
    for _, e in resp:
        state[e] = True
    for _, e in occurrences(seq, end):
        state[e] = False
    for s, _ in occurrences(seq, instruction):
        state[s] = False
    for s, _ in resp:
        state[s] = False
    state[0] = False
    out, cur = [], False
    for i in range(n):
        if state[i] is not None:
            cur = state[i]
        out.append(cur)
    return out


# -- unit tests ---------------------------------------------------------------------------------------------
def test_ignore_index_is_minus_100():
    assert IGNORE_INDEX == -100


def test_find_template_single_token_and_boundaries():
    ids = np.array([3, 1, 3, 3])
    assert find_template(ids, [3]).tolist() == [0, 2, 3]
    assert find_template(ids, [3, 3]).tolist() == [2]
    assert find_template(ids, [1, 3, 3, 3, 9]).tolist() == []  # longer than what is left
    assert find_template(np.array([1, 2, 1, 2]), [2, 1], lengths=np.array([2, 2])).tolist() == []


def test_find_template_does_not_change_input():
    ids = np.array([1, 2, 3])
    before = ids.copy()
    find_template(ids, [2, 3])
    np.testing.assert_array_equal(ids, before)


def test_find_templates_is_a_plain_scan_leftmost_longest_non_overlapping():
    """Issue 9 item 9: an end template (7, 7) in 7 7 7 is found once, at 0, as str.find / re.finditer would."""
    starts, ends = find_templates(np.array([1, 1, 1, 0]), [(1, 1)])
    assert list(zip(starts.tolist(), ends.tolist())) == [(0, 2)]
    starts, ends = find_templates(np.array([7, 7, 7, 7, 7]), [(7, 7)])
    assert list(zip(starts.tolist(), ends.tolist())) == [(0, 2), (2, 4)]
    # nested variants: the longest one at the leftmost start wins; a partial overlap is not merged
    starts, ends = find_templates(np.array([1, 2, 3, 4]), [(2, 3), (1, 2), (1, 2, 3)])
    assert list(zip(starts.tolist(), ends.tolist())) == [(0, 3)]
    starts, ends = find_templates(np.array([1, 2, 3, 4]), [(1, 2), (2, 3, 4)])
    assert list(zip(starts.tolist(), ends.tolist())) == [(0, 2)]
    # the scan restarts in every sequence
    starts, ends = find_templates(np.array([7, 7, 7, 7, 7]), [(7, 7)], lengths=np.array([3, 2]))
    assert list(zip(starts.tolist(), ends.tolist())) == [(0, 2), (3, 5)]


def test_overlapping_end_template_trains_up_to_the_first_full_match():
    # 2 response, (7, 7) end: in "2 5 7 7 7 9" the end is 7 7 at 2-3; the third 7 is after the end
    mask, *_ = completion_mask_from_templates(np.array([2, 5, 7, 7, 7, 9]), np.array([6]), [(2,)], end=[(7, 7)])
    assert mask.astype(int).tolist() == [0, 1, 1, 1, 0, 0]
    starts, ends = find_templates(np.array([5, 6, 7]), [])
    assert starts.size == 0 and ends.size == 0


def test_single_turn_trains_after_last_response():
    ids = np.array([9, 2, 5, 2, 6, 7])
    mask, found, _ = completion_mask_from_templates(ids, np.array([6]), [(2,)])
    assert mask.tolist() == [False, False, False, False, True, True]
    assert found.tolist() == [True]


def test_missing_response_trains_nothing_and_is_reported():
    mask, found, _ = completion_mask_from_templates(np.array([1, 2, 5, 3, 4]), np.array([3, 2]), [(2,)])
    assert mask.tolist() == [False, False, True, False, False]
    assert found.tolist() == [True, False]


def test_multi_turn_with_end_template_trains_end_inclusive():
    # 1 user, 2 assistant, 8 end, 0 eos
    ids = np.array([1, 50, 8, 2, 60, 8, 0, 1, 51, 8, 2, 61, 8, 0])
    mask, *_ = completion_mask_from_templates(ids, np.array([14]), [(2,)], end=[(8,)])
    assert ids[mask].tolist() == [60, 8, 61, 8]


def test_end_template_any_turn_order():
    # system turn, two assistant turns in a row, a tool turn: only the assistant spans are trained
    ids = np.array([4, 40, 8, 2, 60, 8, 2, 61, 8, 5, 70, 8, 2, 62, 8])
    mask, *_ = completion_mask_from_templates(ids, np.array([15]), [(2,)], end=[(8,)])
    assert ids[mask].tolist() == [60, 8, 61, 8, 62, 8]


def test_several_instruction_templates():
    ids = np.array([4, 40, 1, 50, 2, 60, 5, 70, 2, 61])  # 4 system, 1 user, 5 tool
    mask, _, has_instr = completion_mask_from_templates(ids, np.array([10]), [(2,)], instruction=[(1,), (4,), (5,)])
    assert ids[mask].tolist() == [60, 61]
    assert has_instr.tolist() == [True]


def test_empty_answer_stays_masked():
    ids = np.array([1, 50, 2, 1, 51, 2, 61])
    mask, *_ = completion_mask_from_templates(ids, np.array([7]), [(2,)], instruction=[(1,)])
    assert ids[mask].tolist() == [61]


def test_template_at_end_of_sequence_does_not_leak_into_next():
    ids = np.array([1, 50, 2, 1, 51, 2, 61])
    mask, *_ = completion_mask_from_templates(ids, np.array([3, 4]), [(2,)], instruction=[(1,)])
    assert mask.tolist() == [False] * 3 + [False, False, False, True]


def test_as_template_list_errors():
    with pytest.raises(FormatKitValueError, match="empty"):
        as_template_list([])
    with pytest.raises(FormatKitTypeError, match="neither a string"):
        as_template_list([[1, 2], [1.5]])
    with pytest.raises(FormatKitTypeError, match="must be a string"):
        as_template_list(3.5)


def test_small_helpers():
    assert position_ids_from_lengths(np.array([1, 3])).tolist() == [0, 0, 1, 2]
    assert cu_seq_lens_from_lengths(np.array([1, 3])).dtype == np.int32
    assert seq_idx_from_lengths(np.array([2, 1])).tolist() == [0, 0, 1]
    assert labels_from_mask(np.array([4, 5]), np.array([True, False]), ignore_index=-1).tolist() == [4, -1]
    with pytest.raises(FormatKitValueError, match="padding_side"):
        pad_flat(np.array([1]), np.array([1]), 0, padding_side="middle")


# -- template variants on real tokenizers -----------------------------------------------------------------
def test_variants_llama2_book_pitfall(load_tokenizer):
    tok = load_tokenizer("llama-2")
    variants = template_variants(tok, "### Assistant:")
    assert variants[0] == (835, 4007, 22137, 29901)  # the exact encoding first, as trl 0.19 used
    assert (2277, 29937, 4007, 22137, 29901) in variants  # as it tokenizes after a newline (the book's fix)
    assert template_variants(tok, "### Assistant:", match_in_context=False) == [(835, 4007, 22137, 29901)]


def test_variants_trailing_space_is_not_part_of_the_answer(load_tokenizer):
    tok = load_tokenizer("llama-2")
    text = "### Question: Hi\n### Answer: Buenos Aires."
    ids = np.array(tok.encode(text, add_special_tokens=False))
    starts, ends = find_templates(ids, template_variants(tok, "### Answer: "))
    assert starts.size == 1
    assert tok.decode(ids[ends[0] :].tolist()) == "Buenos Aires."


@pytest.mark.parametrize("name", ["phi-3-mini", "llama-2", "gpt2", "qwen2", "llama-3"])
@pytest.mark.parametrize("template", ["### Answer:", "\n### Answer:", "Assistant:", "<|assistant|>"])
def test_variants_find_template_in_real_text(load_tokenizer, name, template):
    """Whatever precedes it, the template is found as it tokenizes inside text, on every tokenizer."""
    tok = load_tokenizer(name)
    variants = template_variants(tok, template)
    for before in ["Hello", "Hello\n", "Hello\n\n", "Hello ", "Hello.", "Hello:"]:
        text = f"{before}{template} Paris is the capital."
        ids = np.array(tok.encode(text, add_special_tokens=False))
        starts, ends = find_templates(ids, variants)
        assert starts.size >= 1, (name, template, before, tok.convert_ids_to_tokens(ids.tolist()))
        answer = tok.decode(ids[ends[-1] :].tolist())
        assert answer.strip() == "Paris is the capital.", (name, template, before, answer)


@pytest.mark.parametrize("name", ["qwen2", "llama-3", "gpt2", "phi-3-mini", "llama-2"])
@pytest.mark.parametrize(
    "template, text, answer",
    [
        # byte-level BPE merges ":" with the newline after it into one token (":\n")
        ("### Response:", "### Instruction:\nHi\n\n### Response:\nHello there", "Hello there"),
        # ... and ":\n" with an answer that starts with a newline (":\n\n")
        ("### Response:\n", "### Instruction:\nHi\n\n### Response:\n\nHello there", "Hello there"),
        ("### Response:", "### Response:\n\nHello there", "Hello there"),
    ],
)
def test_variants_template_whose_last_token_merges_with_a_newline(load_tokenizer, name, template, text, answer):
    """Issue 9 item 6: the merged token counts as template; the answer is trained from the next token."""
    tok = load_tokenizer(name)
    ids = np.array(tok.encode(text, add_special_tokens=False))
    starts, ends = find_templates(ids, template_variants(tok, template))
    assert starts.size == 1, (name, tok.convert_ids_to_tokens(ids.tolist()))
    assert tok.decode(ids[ends[0] :].tolist()).strip() == answer


def test_variants_never_swallow_a_word_after_the_template(load_tokenizer):
    """Only whitespace merged into the template's last token counts as template, never a word of the answer."""
    for name in ("qwen2", "llama-3", "gpt2"):
        tok = load_tokenizer(name)
        for variant in template_variants(tok, "Answer:"):
            decoded = tok.decode(list(variant))  # a token may reach into the text before the template, never after
            assert decoded.rstrip().endswith("Answer:"), (name, tok.convert_ids_to_tokens(list(variant)))


def test_check_template_roles_rejects_a_response_inside_the_instruction():
    """Issue 9 item 8: qwen2's '<|im_start|>' as response and '<|im_start|>user\n' as instruction."""
    with pytest.raises(FormatKitValueError, match="inside the instruction template"):
        check_template_roles([(151644,)], instruction=[(151644, 872, 198)])
    with pytest.raises(FormatKitValueError, match="share"):
        check_template_roles([(5, 6)], instruction=[(5, 6)])
    # an instruction template that is the start of the response template is fine (masked from its start)
    check_template_roles([(151644, 77091, 198)], instruction=[(151644,)])


def test_check_template_roles_rejects_an_end_template_that_ends_the_response_template():
    """Issue 9 item 8: end '\n' equal to the response template's last token closes every answer at once."""
    with pytest.raises(FormatKitValueError, match="end_template .* last token"):
        check_template_roles([(14374, 5949, 25, 198)], end=[(198,)])
    check_template_roles([(14374, 5949, 25, 198)], end=[(151645,)])
    check_template_roles([(2,)], end=[(2, 8)])


def test_suspicious_responses_marker_inside_a_user_message():
    """Issue 9 item 1: '<|assistant|>' typed inside a user turn, an answer with a second response template."""
    U, A, E = 1, 2, 8
    user_says_marker = [U, 50, A, 51, E, A, 60, E]  # response template inside an unclosed user turn
    two_responses = [U, 50, E, A, 60, A, 61, E]  # a second response template before the end
    clean = [U, 50, E, A, 60, E, U, 52, E, A, 62, E]
    flat = np.array(user_says_marker + two_responses + clean)
    lengths = np.array([8, 8, 12])
    spans = find_template_spans(flat, lengths, [(A,)], instruction=[(U,)], end=[(E,)])
    assert suspicious_responses(spans).tolist() == [1, 1, 0]
    # without an end template, user -> response is the normal layout, but two responses in a row are not
    spans = find_template_spans(flat, lengths, [(A,)], instruction=[(U,)])
    assert suspicious_responses(spans).tolist() == [1, 1, 0]
    spans = find_template_spans(np.array([U, 50, A, 60]), np.array([4]), [(A,)], instruction=[(U,)])
    assert suspicious_responses(spans).tolist() == [0]
    # single-turn rule (response only): several responses are trl's documented multi-turn case, not flagged
    assert suspicious_responses(find_template_spans(flat, lengths, [(A,)])).tolist() == [0, 0, 0]


def test_suspicious_responses_ignores_an_instruction_template_that_starts_the_response():
    """qwen2: instruction '<|im_start|>' is also the first token of '<|im_start|>assistant\n'."""
    S, ASST, END = 151644, 77091, 151645
    row = [S, 872, 50, END, S, ASST, 60, END]
    spans = find_template_spans(np.array(row), np.array([8]), [(S, ASST)], instruction=[(S,)], end=[(END,)])
    assert suspicious_responses(spans).tolist() == [0]


def test_template_that_encodes_to_nothing(load_tokenizer):
    with pytest.raises(FormatKitValueError, match="encodes to no tokens"):
        template_variants(load_tokenizer("gpt2"), "")


# -- properties ---------------------------------------------------------------------------------------------
TOKENS = st.integers(min_value=0, max_value=7)
SEQS = st.lists(st.lists(TOKENS, min_size=1, max_size=30), min_size=1, max_size=6)
TEMPLATE = st.lists(st.integers(min_value=0, max_value=7), min_size=1, max_size=3).map(tuple)


@given(SEQS, TEMPLATE, st.lists(TEMPLATE, max_size=2), st.lists(TEMPLATE, max_size=1))
def test_mask_matches_reference(seqs, response, instruction, end):
    instruction = [t for t in instruction if t != response]
    flat = np.array([t for s in seqs for t in s])
    lengths = np.array([len(s) for s in seqs])
    mask, found, _ = completion_mask_from_templates(flat, lengths, [response], instruction, end)
    expected = [m for s in seqs for m in reference_mask(s, [response], instruction, end)]
    assert mask.tolist() == expected
    assert found.tolist() == [bool(occurrences(s, [response])) for s in seqs]


@given(SEQS, TEMPLATE, st.lists(TEMPLATE, max_size=2))
def test_mask_of_each_sequence_does_not_depend_on_its_neighbours(seqs, response, instruction):
    instruction = [t for t in instruction if t != response]
    flat = np.array([t for s in seqs for t in s])
    mask, *_ = completion_mask_from_templates(flat, np.array([len(s) for s in seqs]), [response], instruction)
    alone = [completion_mask_from_templates(np.array(s), np.array([len(s)]), [response], instruction)[0] for s in seqs]
    assert mask.tolist() == np.concatenate(alone).tolist()


@given(SEQS, st.sampled_from(["left", "right"]), st.sampled_from([None, 1, 4, 8]))
def test_pad_flat_round_trip(seqs, side, multiple):
    flat = np.array([t for s in seqs for t in s])
    lengths = np.array([len(s) for s in seqs])
    padded = pad_flat(flat, lengths, -1, padding_side=side, pad_to_multiple_of=multiple)
    assert padded.shape[1] % (multiple or 1) == 0
    rows = [r[r != -1].tolist() for r in padded]
    assert rows == seqs


def test_variants_never_include_an_unknown_word_id():
    """A vocabulary that maps unknown words to an id the tokenizer does not call UNK (here <pad>)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordLevel({"<pad>": 0, "<eos>": 1, "<user>": 2, "<bot>": 3}, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    assert tok.unk_token is None
    assert template_variants(tok, "<bot>") == [(3,)]  # ".<bot>" is one unknown word: id 0, not a variant
