"""Formats: ``Format``, ``FormatRegistry``, the default registry, detection, built-in converters, ``to_messages``.

The restored trl functions are in ``test_formats_dataset_formatting.py``, formatting-function helpers and the
formatted-text check in ``test_formats_formatting.py``, plugins in ``test_plugins.py``.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict
from hypothesis import given
from hypothesis import strategies as st

import trl_formatkit
from trl_formatkit import Format, FormatRegistry, detect_format, formats, register_format, to_messages
from trl_formatkit.errors import FormatKitKeyError, FormatKitTypeError, FormatKitValueError, FormatKitWarning
from trl_formatkit.formats import builtin
from trl_formatkit.formats.builtin import (
    alpaca_to_messages,
    chatml_to_messages,
    instruction_to_messages,
    sharegpt_to_messages,
    text_to_messages,
)

REPO_ROOT = Path(__file__).resolve().parent.parent

from book_facts import MESSAGES as BOOK_MESSAGES
from book_facts import YODA_ROWS, YODA_TEXTS
from helpers import run_python_json


def qa(row):
    return [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]


QA = Format("qa", {"question", "answer"}, qa, "question / answer", aliases=("question-answer",))


# -- Format -----------------------------------------------------------------------------------------------------
def test_format_normalizes_columns_and_aliases_and_is_frozen():
    fmt = Format("x", ["a", "b", "a"], qa, aliases="y")
    assert fmt.columns == frozenset({"a", "b"}) and isinstance(fmt.columns, frozenset)
    assert fmt.aliases == ("y",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        fmt.name = "z"  # type: ignore[misc]
    assert str(QA) == "qa (answer, question)"


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"name": "", "columns": {"a"}, "to_messages": qa}, FormatKitValueError, "non-empty string"),
        ({"name": "x", "columns": "prompt", "to_messages": qa}, FormatKitTypeError, r"write \{'prompt'\}"),
        ({"name": "x", "columns": set(), "to_messages": qa}, FormatKitValueError, "non-empty set"),
        ({"name": "x", "columns": {"a"}, "to_messages": "nope"}, FormatKitTypeError, "to_messages must be a function"),
        ({"name": "x", "columns": {"a"}, "to_messages": qa, "aliases": ("",)}, FormatKitValueError, "aliases"),
    ],
)
def test_format_rejects_bad_definitions(kwargs, error, match):
    with pytest.raises(error, match=match):
        Format(**kwargs)


def test_format_matches_missing_and_column_mapping():
    assert QA.matches(["id", "question", "answer"])
    assert not QA.matches(["question"])
    assert QA.missing(["question", "x"]) == ["answer"]
    mapped = QA.with_column_mapping({"q": "question", "a": "answer"})
    assert mapped.columns == frozenset({"q", "a"}) and mapped.name == "qa"
    assert mapped.to_messages({"q": "Q", "a": "A", "id": 3}) == qa({"question": "Q", "answer": "A"})
    assert QA.with_column_mapping({}) is QA
    with pytest.raises(FormatKitValueError, match="maps both 'q' and 'p' to 'question'"):
        QA.with_column_mapping({"q": "question", "p": "question"})


# -- FormatRegistry ---------------------------------------------------------------------------------------------
def test_registry_register_get_aliases_and_views():
    reg = FormatRegistry()
    assert reg.register(QA) is QA
    for name in ("qa", "QA", "question-answer", "Question_Answer", " question answer "):
        assert reg.get(name) is QA, name
    assert reg.get(QA) is QA
    assert reg["qa"] is QA and "question-answer" in reg and "nope" not in reg and 3 not in reg and QA in reg
    assert reg.names() == ["qa"] and list(reg) == ["qa"] and len(reg) == 1
    assert reg.aliases() == {"question-answer": "qa"}
    view = reg.registry
    assert dict(view) == {"qa": QA}
    with pytest.raises(TypeError):
        view["other"] = QA  # type: ignore[index]
    reg.register(Format("other", {"o"}, qa))
    assert "other" in view  # the view follows the registry
    assert reg.unregister("question-answer") is QA
    assert "qa" not in reg and "question-answer" not in reg
    assert repr(reg) == "FormatRegistry([other])"


def test_registry_duplicate_names_raise_unless_replace():
    reg = FormatRegistry([QA])
    with pytest.raises(FormatKitValueError, match=r"format name 'qa' is already registered .*replace=True"):
        reg.register(Format("qa", {"q"}, qa))
    with pytest.raises(FormatKitValueError, match=r"alias 'question-answer' is already registered"):
        reg.register(Format("qa2", {"q"}, qa, aliases=("Question_Answer",)))
    with pytest.raises(FormatKitValueError, match="already registered"):
        reg.register(Format("Question-Answer", {"q"}, qa))  # a new name equal to an alias
    with pytest.raises(FormatKitValueError, match="lists a name twice"):
        reg.register(Format("dup", {"q"}, qa, aliases=("DUP",)))
    with pytest.raises(FormatKitTypeError, match="takes a trl_formatkit.Format"):
        reg.register({"name": "qa"})  # type: ignore[arg-type]
    # replace=True: the old format and its aliases go, the new aliases point at the new one
    new = Format("qa", {"q", "a"}, qa, aliases=("qanda",))
    reg.register(new, replace=True)
    assert reg.get("qa") is new and reg.get("qanda") is new and "question-answer" not in reg
    # replace=True may take over another format's alias, never another format's name
    reg.register(Format("other", {"o"}, qa, aliases=("oo",)))
    taker = Format("taker", {"t"}, qa, aliases=("oo",))
    reg.register(taker, replace=True)
    assert reg.get("oo") is taker and reg.get("other").name == "other"
    with pytest.raises(FormatKitValueError, match="is the name of the format 'other'"):
        reg.register(Format("thief", {"t"}, qa, aliases=("other",)), replace=True)
    assert "thief" not in reg


def test_registry_unknown_name_says_closest_known_and_how_to_add():
    with pytest.raises(FormatKitKeyError) as info:
        formats.get("alpacca")
    message = str(info.value)
    assert "unknown format 'alpacca'" in message
    assert "Did you mean 'alpaca'?" in message
    for known in ("alpaca (input, instruction, output)", "chatml (messages;", "sharegpt (conversations;"):
        assert known in message
    assert "register_format(Format(name, columns, to_messages))" in message
    assert "entry-point group 'trl_formatkit.plugins'" in message
    assert isinstance(info.value, KeyError)  # `except KeyError` keeps working
    with pytest.raises(FormatKitKeyError, match=r"Did you mean 'prompt-completion' \(= 'instruction'\)\?"):
        formats.get("prompt-complete")
    with pytest.raises(FormatKitTypeError, match="must be a string or a Format"):
        formats.get(3)  # type: ignore[arg-type]


# -- the default registry ---------------------------------------------------------------------------------------
def test_default_registry_is_the_formats_module_and_has_the_builtins():
    import trl_formatkit.formats as formats_module

    assert formats is formats_module is trl_formatkit.formats is formats_module.formats
    assert {"alpaca", "chatml", "instruction", "sharegpt", "text"} <= set(formats.names())
    aliases = formats.aliases()
    assert aliases["messages"] == "chatml"
    assert aliases["prompt-completion"] == "instruction"
    assert aliases["conversations"] == "sharegpt"
    assert formats.get("messages") is builtin.CHATML
    assert formats["conversations"] is builtin.SHAREGPT
    assert "alpaca" in formats and len(formats) >= 5 and "alpaca" in list(formats)
    assert formats.registry["alpaca"] is builtin.ALPACA
    assert bool(formats) is True
    assert formats.default_registry.get("text").priority == -1


def test_register_format_decorator_and_object_forms():
    reg = FormatRegistry()

    @register_format("dolly", {"instruction", "context", "response"}, aliases=("dolly-15k",), registry=reg)
    def dolly(row):
        """Dolly rows.

        More text."""
        return [{"role": "user", "content": row["instruction"]}, {"role": "assistant", "content": row["response"]}]

    assert dolly({"instruction": "i", "response": "r"})[1]["content"] == "r"  # returned unchanged
    fmt = reg.get("dolly-15k")
    assert fmt.name == "dolly" and fmt.description == "Dolly rows." and fmt.to_messages is dolly
    assert register_format(QA, registry=reg) is QA and reg.get("qa") is QA
    with pytest.raises(FormatKitTypeError, match="needs the columns"):
        register_format("x", registry=reg)
    with pytest.raises(FormatKitTypeError, match="takes the format's settings from the Format"):
        register_format(QA, {"a"}, registry=reg)
    with pytest.raises(FormatKitTypeError, match="takes a Format"):
        register_format(3, registry=reg)  # type: ignore[arg-type]


def test_register_format_in_the_default_registry_clashes_with_builtins():
    with pytest.raises(FormatKitValueError, match="'chatml' is already registered .*plugin 'builtin'"):
        register_format(Format("chatml", {"x"}, qa))
    with pytest.raises(FormatKitValueError, match="alias 'messages' is already registered"):
        register_format(Format("mine", {"x"}, qa, aliases=("messages",)))


# -- detection --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (["messages"], "chatml"),
        (["prompt", "completion"], "instruction"),
        (["instruction", "input", "output"], "alpaca"),
        (["conversations"], "sharegpt"),
        (["text"], "text"),
        # extra columns are fine (trl 0.19 required an exact match for the instruction format)
        (["id", "prompt", "completion", "source"], "instruction"),
        (["prompt", "prompt_id", "messages"], "chatml"),  # ultrachat_200k's columns
        # the most specific wins; 'text' is only a fallback
        (["instruction", "input", "output", "text"], "alpaca"),  # tatsu-lab/alpaca's columns
        (["messages", "text"], "chatml"),  # the book's BYOFD output: messages + formatted text
        (["conversations", "text", "id"], "sharegpt"),
    ],
)
def test_detect_format_from_columns(columns, expected):
    assert detect_format(columns).name == expected
    assert formats.detect({c: None for c in columns}).name == expected  # a row works the same


def test_detect_format_from_datasets():
    ds = Dataset.from_list(YODA_ROWS)
    assert detect_format(ds).name == "instruction"
    assert detect_format(DatasetDict({"train": ds, "test": ds})).name == "instruction"
    assert detect_format(ds.to_iterable_dataset()).name == "instruction"
    assert detect_format(ds.features).name == "instruction"
    renamed = ds.rename_columns({"prompt": "question", "completion": "answer"})
    assert detect_format(renamed, column_mapping={"question": "prompt", "answer": "completion"}).name == "instruction"


def test_detect_format_unknown_lists_the_columns_seen_and_the_formats_known():
    with pytest.raises(FormatKitValueError) as info:
        detect_format(["instruction", "output", "id"])
    message = str(info.value)
    assert "no known format matches the columns ['instruction', 'output', 'id']" in message
    assert "Closest: alpaca, which also needs 'input'" in message
    assert "Known formats: alpaca (input, instruction, output)" in message
    assert "column_mapping" in message and "register_format" in message


def test_detect_format_ambiguous_lists_the_candidates():
    with pytest.raises(FormatKitValueError) as info:
        detect_format(["messages", "conversations"])
    message = str(info.value)
    assert "match several formats equally: chatml (messages), sharegpt (conversations)" in message
    assert "format=NAME" in message


def test_detect_format_bad_inputs():
    with pytest.raises(FormatKitTypeError, match=r"pass \['messages'\]"):
        detect_format("messages")
    with pytest.raises(FormatKitTypeError, match="column names"):
        detect_format([1, 2])
    with pytest.raises(FormatKitTypeError, match="cannot read column names"):
        detect_format(42)
    with pytest.raises(FormatKitKeyError, match="column_mapping names column"):
        detect_format(["a"], column_mapping={"b": "prompt"})
    with pytest.raises(FormatKitValueError, match="already has a column of that name"):
        detect_format(["q", "prompt", "completion"], column_mapping={"q": "prompt"})


_ALL_COLUMNS = sorted({c for name in formats.names() for c in formats.get(name).columns})


@given(
    st.sets(st.sampled_from(_ALL_COLUMNS)),
    st.sets(st.text(alphabet="xyz_", min_size=1, max_size=4)),
)
def test_detect_picks_a_strictly_most_specific_match_or_says_why_not(known, extra):
    """Whatever the columns: the result matches, and beats every other match; else the error is right."""
    columns = sorted(known | extra)
    matching = [formats.get(n) for n in formats.names() if formats.get(n).matches(columns)]
    try:
        found = detect_format(columns)
    except FormatKitValueError as exc:
        rank = sorted({(f.priority, len(f.columns)) for f in matching}, reverse=True)
        if not matching:
            assert "no known format matches" in str(exc)
        else:
            top = [f for f in matching if (f.priority, len(f.columns)) == rank[0]]
            assert len(top) > 1 and "several formats equally" in str(exc)
            assert all(f.name in str(exc) for f in top)
        return
    assert found.matches(columns)
    for other in matching:
        if other is not found:
            assert (other.priority, len(other.columns)) < (found.priority, len(found.columns))


# -- built-in converters ----------------------------------------------------------------------------------------
def test_chatml_keeps_messages_and_maps_sharegpt_style_turns():
    assert chatml_to_messages({"messages": BOOK_MESSAGES}) == BOOK_MESSAGES
    assert chatml_to_messages({"messages": BOOK_MESSAGES}) is not BOOK_MESSAGES  # a new list
    turns = [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]
    assert chatml_to_messages({"messages": turns}) == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
    ]
    tool_call = {"role": "assistant", "content": None, "tool_calls": [{"name": "f"}]}
    assert chatml_to_messages({"messages": [tool_call]}) == [tool_call]
    with pytest.raises(FormatKitTypeError, match="column .*: a conversation must be a list of messages"):
        chatml_to_messages({"messages": "hello"})
    with pytest.raises(FormatKitTypeError, match="message 1: expected a dict"):
        chatml_to_messages({"messages": [BOOK_MESSAGES[0], "oops"]})
    with pytest.raises(FormatKitValueError, match="neither 'role'/'content' nor 'from'/'value'"):
        chatml_to_messages({"messages": [{"speaker": "me"}]})


def test_instruction_strings_and_conversational():
    assert instruction_to_messages({"prompt": "P", "completion": "C"}) == [
        {"role": "user", "content": "P"},
        {"role": "assistant", "content": "C"},
    ]
    prompt = [{"role": "system", "content": "S"}, {"role": "user", "content": "P"}]
    completion = [{"role": "assistant", "content": "C"}]
    assert instruction_to_messages({"prompt": prompt, "completion": completion}) == prompt + completion
    assert instruction_to_messages({"prompt": prompt, "completion": "C"}) == prompt + completion
    assert instruction_to_messages({"prompt": "P", "completion": completion}) == [
        {"role": "user", "content": "P"},
        *completion,
    ]


def test_alpaca_joins_the_input_into_the_user_turn():
    row = {"instruction": "Translate.", "input": "Hola", "output": "Hello"}
    assert alpaca_to_messages(row) == [
        {"role": "user", "content": "Translate.\n\nHola"},
        {"role": "assistant", "content": "Hello"},
    ]
    for empty in ("", "  \n", None):
        assert alpaca_to_messages({**row, "input": empty})[0]["content"] == "Translate."
    with pytest.raises(FormatKitTypeError, match="alpaca format: column 'output' must be a string"):
        alpaca_to_messages({**row, "output": 3})
    with pytest.raises(FormatKitTypeError, match="column 'input' must be a string"):
        alpaca_to_messages({**row, "input": ["x"]})


def test_sharegpt_maps_speakers_and_explains_unknown_ones():
    turns = [
        {"from": "system", "value": "S"},
        {"from": "human", "value": "H"},
        {"from": "gpt", "value": "G"},
        {"from": "tool", "value": "T"},
        {"from": "GPT", "value": "G2"},
    ]
    assert [m["role"] for m in sharegpt_to_messages({"conversations": turns})] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
    ]
    # trl 0.x's `conversations` column held role/content messages: kept as they are
    assert sharegpt_to_messages({"conversations": BOOK_MESSAGES}) == BOOK_MESSAGES
    with pytest.raises(FormatKitValueError, match=r"unknown ShareGPT speaker 'narrator'; known: human -> user"):
        sharegpt_to_messages({"conversations": [{"from": "narrator", "value": "x"}]})
    custom = functools.partial(sharegpt_to_messages, roles={"narrator": "system"})
    assert custom({"conversations": [{"from": "narrator", "value": "x"}]}) == [{"role": "system", "content": "x"}]


def test_text_format_explains_what_to_do_instead():
    with pytest.raises(FormatKitValueError, match=r"dataset_text_field='text'.*check_formatted_text"):
        text_to_messages({"text": "<|user|>..."})


# -- to_messages ------------------------------------------------------------------------------------------------
def test_to_messages_instruction_rows_render_as_the_book_prints(load_tokenizer):
    """The fix for "the instruction format is no longer templated": messages, then the chat template."""
    tokenizer = load_tokenizer("phi-3-mini")
    ds = Dataset.from_list([{"id": i, **row} for i, row in enumerate(YODA_ROWS)])
    out = to_messages(ds)
    assert out.column_names == ["id", "messages"]
    assert out["id"] == [0, 1]
    rendered = [tokenizer.apply_chat_template(m, tokenize=False) for m in out["messages"]]
    assert rendered == YODA_TEXTS
    assert ds.column_names == ["id", "prompt", "completion"]  # the input is untouched


def test_to_messages_output_is_what_trl_calls_conversational():
    from trl.data_utils import is_conversational

    ds = Dataset.from_list(YODA_ROWS)
    assert not is_conversational(ds[0])  # trl would not apply the chat template to these
    assert is_conversational(to_messages(ds)[0])


@pytest.mark.parametrize(
    ("rows", "format", "expected_first"),
    [
        (
            [{"instruction": "Add.", "input": "2+2", "output": "4", "text": "### ..."}],
            "auto",
            [{"role": "user", "content": "Add.\n\n2+2"}, {"role": "assistant", "content": "4"}],
        ),
        (
            [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}], "id": "a"}],
            "auto",
            [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}],
        ),
        ([{"messages": BOOK_MESSAGES}], "messages", BOOK_MESSAGES),
        (
            [{"prompt": [{"role": "user", "content": "P"}], "completion": [{"role": "assistant", "content": "C"}]}],
            "prompt-completion",
            [{"role": "user", "content": "P"}, {"role": "assistant", "content": "C"}],
        ),
    ],
)
def test_to_messages_converts_each_builtin(rows, format, expected_first):
    ds = Dataset.from_list(rows)
    out = to_messages(ds, format)
    assert out[0]["messages"] == expected_first
    fmt = detect_format(ds) if format == "auto" else formats.get(format)
    assert not (fmt.columns - {"messages"}) & set(out.column_names)  # consumed columns are gone
    assert set(out.column_names) == (set(ds.column_names) - fmt.columns) | {"messages"}


def test_to_messages_remove_columns_options():
    ds = Dataset.from_list([{"id": 1, "source": "s", **YODA_ROWS[0]}])
    assert to_messages(ds, remove_columns="all").column_names == ["messages"]
    assert to_messages(ds, remove_columns=["prompt", "completion", "source"]).column_names == ["id", "messages"]
    with pytest.warns(FormatKitWarning, match=r"keeps the column\(s\) \['prompt', 'completion'\] next to 'messages'"):
        kept = to_messages(ds, remove_columns=False)
    assert kept.column_names == ["id", "source", "prompt", "completion", "messages"]
    with pytest.raises(FormatKitValueError, match=r"remove_columns names \['nope'\]"):
        to_messages(ds, remove_columns=["nope"])


def test_to_messages_warns_when_a_prompt_column_would_hide_messages_from_trl():
    """ultrachat_200k has `prompt` next to `messages`: trl would take the prompt-completion path."""
    ds = Dataset.from_list([{"prompt": "P", "prompt_id": "x", "messages": BOOK_MESSAGES}])
    with pytest.warns(FormatKitWarning, match=r"trl's SFTTrainer treats a dataset with a 'prompt' column"):
        out = to_messages(ds)
    assert out.column_names == ["prompt", "prompt_id", "messages"]
    assert to_messages(ds, remove_columns=["prompt", "messages"]).column_names == ["prompt_id", "messages"]


def test_to_messages_column_mapping():
    ds = Dataset.from_list([{"question": r["prompt"], "answer": r["completion"]} for r in YODA_ROWS])
    out = to_messages(ds, column_mapping={"question": "prompt", "answer": "completion"})
    assert out.column_names == ["messages"]
    assert out[1]["messages"][1]["content"] == YODA_ROWS[1]["completion"]
    explicit = to_messages(ds, "instruction", column_mapping={"question": "prompt", "answer": "completion"})
    assert explicit["messages"] == out["messages"]
    with pytest.raises(FormatKitValueError, match=r"needs the column\(s\) \['completion', 'prompt'\].*column_mapping"):
        to_messages(ds, "instruction")


def test_to_messages_replaces_an_existing_messages_column():
    ds = Dataset.from_list([{"messages": "old text", **YODA_ROWS[0]}])
    out = to_messages(ds, "instruction")
    assert out.column_names == ["messages"]
    assert out[0]["messages"][0] == {"role": "user", "content": YODA_ROWS[0]["prompt"]}


def test_to_messages_dataset_dict_iterable_and_num_proc():
    ds = Dataset.from_list(YODA_ROWS * 3)
    expected = to_messages(ds)["messages"]
    dd = to_messages(DatasetDict({"train": ds, "test": ds.select([0])}))
    assert isinstance(dd, DatasetDict) and dd["train"]["messages"] == expected
    assert dd["test"]["messages"] == expected[:1]
    streamed = to_messages(ds.to_iterable_dataset(), batch_size=4)
    assert [row["messages"] for row in streamed] == expected
    assert to_messages(ds, num_proc=2)["messages"] == expected
    with pytest.raises(FormatKitValueError, match="num_proc is not supported for an IterableDataset"):
        to_messages(ds.to_iterable_dataset(), num_proc=2)


def test_to_messages_names_the_bad_row():
    rows = [{"conversations": [{"from": "human", "value": "ok"}]}] * 3
    rows.append({"conversations": [{"from": "narrator", "value": "x"}]})
    with pytest.raises(FormatKitValueError, match=r"row 3: column 'conversations', message 0: unknown ShareGPT"):
        to_messages(Dataset.from_list(rows), batch_size=2)
    empty = Format("empty", {"a"}, lambda row: [])
    with pytest.raises(FormatKitValueError, match="turned row 0 into list"):
        to_messages(Dataset.from_list([{"a": 1}]), empty)
    no_role = Format("norole", {"a"}, lambda row: [{"content": "x"}])
    with pytest.raises(FormatKitValueError, match="message 0: expected a dict with a string 'role'"):
        to_messages(Dataset.from_list([{"a": 1}]), no_role)
    no_content = Format("nocontent", {"a"}, lambda row: [{"role": "user"}])
    with pytest.raises(FormatKitValueError, match="has no 'content'"):
        to_messages(Dataset.from_list([{"a": 1}]), no_content)
    missing_key = Format("needs-b", {"a"}, lambda row: [{"role": "user", "content": row["b"]}])
    with pytest.raises(FormatKitValueError, match=r"looked for the key 'b' in row 0.*column_mapping"):
        to_messages(Dataset.from_list([{"a": 1}]), missing_key)


def test_to_messages_errors():
    ds = Dataset.from_list([{"text": "<|user|>\nHi<|end|>\n<|endoftext|>"}])
    with pytest.raises(FormatKitValueError, match="already formatted text"):
        to_messages(ds)
    with pytest.raises(FormatKitKeyError, match="unknown format 'alpacca'"):
        to_messages(Dataset.from_list(YODA_ROWS), "alpacca")
    with pytest.raises(FormatKitTypeError, match=r"detect_format\(row\).to_messages\(row\)"):
        to_messages(YODA_ROWS[0])
    with pytest.raises(FormatKitTypeError, match="Dataset.from_list"):
        to_messages(YODA_ROWS)


def test_to_messages_with_a_custom_format_object_and_registry():
    reg = FormatRegistry([QA])
    ds = Dataset.from_list([{"question": "Q", "answer": "A"}])
    assert to_messages(ds, registry=reg)[0]["messages"] == qa({"question": "Q", "answer": "A"})
    assert to_messages(ds, QA)[0]["messages"] == qa({"question": "Q", "answer": "A"})
    with pytest.raises(FormatKitValueError, match="no known format matches"):
        to_messages(ds)  # the default registry has no 'qa'


# -- import hygiene ---------------------------------------------------------------------------------------------
def test_formats_package_imports_and_works_without_trl_or_datasets():
    code = (
        "import json, sys\n"
        "import trl_formatkit.formats as f\n"
        "from trl_formatkit import Format, formats, hookimpl, batched_formatting_func, check_formatting_func\n"
        "names = formats.names()\n"
        "d = formats.detect(['instruction', 'input', 'output']).name\n"
        "m = formats.get('alpaca').to_messages({'instruction': 'i', 'input': '', 'output': 'o'})\n"
        "b = batched_formatting_func(lambda r: r['a'])({'a': ['x', 'y']})\n"
        "c = check_formatting_func(batched_formatting_func(lambda r: r['a']), {'a': ['x', 'y']})\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('trl', 'datasets'))\n"
        "print(json.dumps({'heavy': heavy, 'names': names, 'd': d, 'b': b}))\n"
    )
    out = run_python_json(code)
    assert out["heavy"] == [], f"the formats package pulled in {out['heavy']}"
    assert out["d"] == "alpaca" and out["b"] == ["x", "y"] and "chatml" in out["names"]


def test_trl_sft_trainer_templates_the_converted_instruction_rows(load_tokenizer, tmp_path):
    """End to end with trl's own SFTTrainer: string prompt/completion rows are concatenated untemplated; after
    to_messages they are tokenized through the chat template, giving the book's printed ids (In [40], row 0)."""
    from trl import SFTConfig, SFTTrainer

    from helpers import tiny_llama

    tokenizer = load_tokenizer("phi-3-mini")
    book_ids = [32010, 450, 29773, 305, 508, 7297, 2243, 333, 373, 278, 10597, 715, 1331, 29889, 32007, 32001, 1551,
                278, 10597, 715, 1331, 29892, 278, 29773, 305, 508, 7297, 2243, 333, 29889, 3869, 29892, 298, 21478,
                1758, 29889, 32007, 32000]  # fmt: skip
    model = tiny_llama(32064)
    args = SFTConfig(output_dir=str(tmp_path), report_to="none", use_cpu=True, bf16=False)
    ds = Dataset.from_list(YODA_ROWS[:1])
    plain = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tokenizer)
    assert 32010 not in plain.train_dataset[0]["input_ids"]  # no <|user|>: trl did not apply the template
    templated = SFTTrainer(model=model, args=args, train_dataset=to_messages(ds), processing_class=tokenizer)
    assert templated.train_dataset[0]["input_ids"] == book_ids
