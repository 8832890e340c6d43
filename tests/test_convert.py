"""``to_messages`` on hostile datasets (issue 9 items 4 and 12): each test failed on the code before its fix."""

from __future__ import annotations

import pytest

from trl_formatkit import to_messages
from trl_formatkit.errors import FormatKitTypeError, FormatKitValueError, FormatKitWarning

datasets = pytest.importorskip("datasets")

CHAT = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello."},
    {"role": "user", "content": "And now?"},
    {"role": "assistant", "content": "Still here."},
]


def test_existing_multi_turn_messages_win_over_prompt_completion():
    ds = datasets.Dataset.from_dict({"messages": [CHAT], "prompt": ["Hi"], "completion": ["Hello."]})
    with pytest.warns(FormatKitWarning, match="prompt"):  # trl would still read prompt/completion: say so
        out = to_messages(ds)
    assert out[0]["messages"] == CHAT  # four turns, not a 2-turn chat built from prompt/completion


def test_a_format_named_explicitly_does_not_replace_existing_messages():
    ds = datasets.Dataset.from_dict({"messages": [CHAT], "prompt": ["Hi"], "completion": ["Hello."]})
    with pytest.raises(FormatKitValueError, match=r"already has a 'messages' column.*\['completion', 'prompt'\]"):
        to_messages(ds, "instruction")
    out = to_messages(ds.remove_columns("messages"), "instruction")  # on purpose: drop the old ones first
    assert len(out[0]["messages"]) == 2


@pytest.mark.parametrize(
    "turn, match",
    [
        ({"from": "gpt", "value": None}, r"row 1, message 1 \(assistant\).*None"),
        ({"from": "gpt"}, r"row 1, message 1 \(assistant\).*None"),
    ],
)
def test_sharegpt_turn_without_value_names_the_row(turn, match):
    good = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]
    ds = datasets.Dataset.from_list([{"conversations": good}, {"conversations": [good[0], turn]}])
    with pytest.raises(FormatKitTypeError, match=match):
        to_messages(ds)


@pytest.mark.parametrize("content, match", [(None, r"row 1, message 0 \(user\).*None"), (5, r"row 0, message 0.*int 1")])
def test_chatml_content_none_or_int_names_the_row(content, match):
    bad = {"messages": [{"role": "user", "content": content}, {"role": "assistant", "content": content}]}
    good = {"messages": [{"role": "user", "content": 1}, {"role": "assistant", "content": 2}]} if content else {
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    }
    # an Arrow column holds one type: with ints, the first row has them too
    with pytest.raises(FormatKitTypeError, match=match):
        to_messages(datasets.Dataset.from_list([good, bad]))


def test_tool_calls_and_content_parts_still_pass():
    call = [{"type": "function", "function": {"name": "weather", "arguments": "{}"}}]
    rows = [{"messages": [{"role": "user", "content": "Weather?", "tool_calls": None},
                          {"role": "assistant", "content": None, "tool_calls": call}]}]
    out = to_messages(datasets.Dataset.from_list(rows))
    assert out[0]["messages"][1]["content"] is None and out[0]["messages"][1]["tool_calls"]
