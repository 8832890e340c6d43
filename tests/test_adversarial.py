"""Property tests with hostile input: random chats with markers typed inside message text, ids of the wrong types,
attention masks with holes; each checked against a brute-force reference (issue 9)."""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_masking import occurrences, reference_mask

from trl_formatkit import DataCollatorForCompletionOnlyLM
from trl_formatkit._toy import toy_tokenizer
from trl_formatkit.errors import FormatKitError, FormatKitWarning

WORDS = [f"w{i}" for i in range(6)]
TOK = toy_tokenizer(pad_token="<pad>", words=WORDS, added_tokens=["<user>", "<bot>", "<end>"])
PAD, USER, BOT, END = (TOK.convert_tokens_to_ids(t) for t in ("<pad>", "<user>", "<bot>", "<end>"))
WORD_IDS = TOK.convert_tokens_to_ids(WORDS)


def collator(**kw):
    kw.setdefault("return_tensors", "np")
    return DataCollatorForCompletionOnlyLM(kw.pop("response", [BOT]), kw.pop("instruction", None), tokenizer=TOK, **kw)


# -- random chats, markers typed inside the text ------------------------------------------------------------
# a message's text: words, and now and then a marker typed by the writer
TEXT = st.lists(st.sampled_from(WORD_IDS * 4 + [USER, BOT, END]), min_size=0, max_size=6)
TURN = st.tuples(st.sampled_from([USER, BOT]), TEXT)
CHAT = st.lists(TURN, min_size=1, max_size=5)
CONFIG = st.sampled_from(
    [{}, {"instruction": [USER]}, {"end_template": [END]}, {"instruction": [USER], "end_template": [END]}]
)


def render(chat, with_end):
    return [t for role, text in chat for t in [role, *text, *([END] if with_end else [])]]


def reference_labels(seq, config):
    """The collator's labels of one sequence, from test_masking's per-token reference of the masking rules."""
    instruction = [tuple(config["instruction"])] if "instruction" in config else []
    end = [tuple(config["end_template"])] if "end_template" in config else []
    trained = reference_mask(seq, [(BOT,)], instruction, end)
    found = bool(occurrences(seq, [(BOT,)])) and (not instruction or bool(occurrences(seq, instruction)))
    return [t if (m and i > 0 and found) else -100 for i, (t, m) in enumerate(zip(seq, trained))]


def reference_suspicious(seq, config):
    """Brute force: walk the templates in order; a response right after a response (or, with an end template,
    right after an instruction) is where no answer can start."""
    if "instruction" not in config and "end_template" not in config:
        return False
    roles = {BOT: "R", USER: "I" if "instruction" in config else None, END: "E" if "end_template" in config else None}
    events = [roles[t] for t in seq if roles.get(t)]
    return any(b == "R" and (a == "R" or (a == "I" and "end_template" in config)) for a, b in zip(events, events[1:]))


@given(st.lists(CHAT, min_size=1, max_size=4), CONFIG, st.booleans())
def test_random_chats_with_markers_in_the_text_match_the_reference(chats, config, padding_free):
    rows = [render(chat, "end_template" in config) for chat in chats]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        batch = collator(padding_free=padding_free, **config)(rows)
    labels = batch["labels"][0].tolist() if padding_free else [
        row[mask.astype(bool)].tolist() for row, mask in zip(batch["labels"], batch["attention_mask"])
    ]
    expected = [reference_labels(r, config) for r in rows]
    assert labels == ([t for r in expected for t in r] if padding_free else expected)
    layout = [str(w.message) for w in caught if "where no answer can start" in str(w.message)]
    flagged = sum(reference_suspicious(r, config) for r in rows)
    if flagged:
        assert len(layout) == 1 and re.match(rf"DataCollatorForCompletionOnlyLM: {flagged} of {len(rows)} ", layout[0])
    else:
        assert not layout


# -- ids of the wrong types ---------------------------------------------------------------------------------
BAD_IDS = st.sampled_from(
    [8.5, 7.0, "12", "w1", True, False, None, [3], (3,), 2**64, 2**63, float("nan"), np.float64(3.0), np.bool_(True),
     np.float32(2.0), b"5"]
)
IDS = st.lists(st.sampled_from(WORD_IDS + [BOT, USER]), min_size=1, max_size=12)


@given(st.lists(IDS, min_size=1, max_size=4), st.data(), BAD_IDS)
def test_an_id_of_the_wrong_type_names_its_row_and_position(rows, data, bad):
    i = data.draw(st.integers(0, len(rows) - 1))
    j = data.draw(st.integers(0, len(rows[i])))
    rows[i] = rows[i][:j] + [bad] + rows[i][j:]
    with pytest.raises(FormatKitError) as info:
        collator(on_missing="ignore")(rows)
    assert f"row {i}'s input_ids contain" in str(info.value) and f"at position {j}," in str(info.value)


@given(st.lists(IDS, min_size=1, max_size=4), st.sampled_from([int, np.int64, np.int32, np.uint16]))
def test_ints_of_any_integer_type_are_ids(rows, kind):
    plain = collator(on_missing="ignore")(rows)
    mixed = collator(on_missing="ignore")([[kind(t) for t in r] for r in rows])
    for key in plain:
        np.testing.assert_array_equal(mixed[key], plain[key])


# -- attention masks with holes -----------------------------------------------------------------------------
@given(IDS, st.lists(st.booleans(), min_size=12, max_size=12), st.sampled_from(["left", "right", "both"]))
def test_attention_mask_padding_is_dropped_and_a_hole_refused(ids, keep, padding):
    n = len(ids)
    mask = [int(k) for k in keep[:n]]
    ones = [k for k, m in enumerate(mask) if m]
    hole = next((k for k in range(ones[0], ones[-1] + 1) if not mask[k]), None) if ones else None
    rows = [{"input_ids": ids, "attention_mask": mask}, {"input_ids": [USER, BOT, WORD_IDS[0]]}]
    if not ones:
        with pytest.raises(FormatKitError, match="row 0 has no tokens"):
            collator(on_missing="ignore")(rows)
    elif hole is not None:
        with pytest.raises(FormatKitError, match=f"row 0: attention_mask has a 0 at position {hole} between 1s"):
            collator(on_missing="ignore")(rows)
    else:
        batch = collator(on_missing="ignore", padding_free=True)(rows)
        assert batch["input_ids"][0].tolist() == ids[ones[0] : ones[-1] + 1] + [USER, BOT, WORD_IDS[0]]
