"""The trained-token views: ``trained_tokens``, ``show_trained`` (terminal, plain text, HTML)."""

from __future__ import annotations

import importlib.util
import re

import pytest

import trl_formatkit
from trl_formatkit import DataCollatorForCompletionOnlyLM
from trl_formatkit.cli import BUNDLED_TOKENIZER, load_tokenizer
from trl_formatkit.views import trained_tokens


def test_views_module_replaces_inspect_and_keeps_the_public_names():
    assert importlib.util.find_spec("trl_formatkit.inspect") is None  # no shadowing of the stdlib's inspect
    assert trl_formatkit.trained_tokens is trained_tokens
    assert trl_formatkit.show_trained.__module__ == "trl_formatkit.views"


@pytest.fixture(scope="module")
def phi():
    tok = load_tokenizer(BUNDLED_TOKENIZER)
    tok.pad_token = tok.unk_token
    return tok


def test_trained_tokens_view_padded_and_flat(phi):
    rows = [phi("<|user|>\nHi<|end|>\n<|assistant|>\nHello!\nBye.<|end|>\n<|endoftext|>"), phi("<|user|>\nA<|end|>")]
    collator = DataCollatorForCompletionOnlyLM("<|assistant|>", tokenizer=phi, on_missing="ignore")
    padded = collator(rows)
    view = trained_tokens(padded, phi, 0)
    assert view.trained_text() == " Hello!\nBye.<|end|><|endoftext|>"
    assert view.n_trained == sum(view.trained) == int((padded["labels"][0] != -100).sum())
    left = trained_tokens(padded, phi, 1)
    assert left.padding[0] and not left.padding[-1] and left.n_trained == 0  # left padding shown as padding
    html = view._repr_html_()
    assert "background:#7d7" in html and "&lt;|assistant|&gt;" in html and "tokens trained" in html
    assert str(view) == "<|user|> Hi<|end|><|assistant|>[ Hello!\nBye.<|end|><|endoftext|>]"
    flat = DataCollatorForCompletionOnlyLM("<|assistant|>", tokenizer=phi, padding_free=True, on_missing="ignore")
    fview = trained_tokens(flat(rows), phi)
    assert sum(fview.boundary) == 1 and fview.trained_text() == view.trained_text()


def _console(color: bool):
    import io

    from rich.console import Console

    if color:
        return Console(file=io.StringIO(), force_terminal=True, color_system="truecolor", width=120)
    return Console(file=io.StringIO(), width=120)  # a file: what a pipe, a log or CI sees


def test_plain_output_marks_the_trained_tokens(phi):
    from trl_formatkit import show_trained

    batch = DataCollatorForCompletionOnlyLM("<|assistant|>", tokenizer=phi)([phi("<|user|>\nHi<|end|>\n<|assistant|>\nYo<|end|>")])
    plain = _console(color=False)
    show_trained(batch, phi, console=plain)
    out = plain.file.getvalue()
    assert "\x1b[" not in out and "<|assistant|>[ Yo<|end|>]" in out  # marked without colour
    colour = _console(color=True)
    show_trained(batch, phi, console=colour)
    assert "\x1b[" in colour.file.getvalue() and "[ Y" not in colour.file.getvalue()  # colour, no brackets


def test_no_color_env_marks_in_plain_text(phi):
    import io

    from rich.console import Console

    from trl_formatkit import show_trained

    console = Console(file=io.StringIO(), force_terminal=True, width=120, _environ={"NO_COLOR": "1"})  # as rich reads it
    batch = DataCollatorForCompletionOnlyLM("<|assistant|>", tokenizer=phi)([phi("<|user|>\nHi<|end|>\n<|assistant|>\nYo<|end|>")])
    show_trained(batch, phi, console=console)
    assert "<|end|>]" in console.file.getvalue()


def test_ignore_index_is_honoured(phi):
    """Issue 9 item 7: with ignore_index=-1 only the answer is shown as trained."""
    rows = [phi("<|user|>\nHi<|end|>\n<|assistant|>\nYo<|end|>")]
    batch = DataCollatorForCompletionOnlyLM("<|assistant|>", tokenizer=phi, ignore_index=-1)(rows)
    n_trained = int((batch["labels"] != -1).sum())
    assert trained_tokens(batch, phi).n_trained == n_trained
    assert trained_tokens(batch, phi, ignore_index=-1).n_trained == n_trained
    custom = {"input_ids": batch["input_ids"], "labels": batch["labels"].clone().fill_(7)}
    assert trained_tokens(custom, phi, ignore_index=7).n_trained == 0


def test_markup_in_data_is_shown_as_written(load_tokenizer):
    """Issue 9 item 10: rich markup in the data ("[/INST]", "[bold]") is text, never markup."""
    from trl_formatkit import show_trained

    llama = load_tokenizer("llama-2")
    llama.pad_token = llama.unk_token
    text = "[INST] say [bold]hi[/bold] [/INST] [/PAD] ok"
    batch = DataCollatorForCompletionOnlyLM("[/INST]", tokenizer=llama)([llama(text)])
    for color in (False, True):
        console = _console(color)
        show_trained(batch, llama, console=console)
        assert "[bold]hi[/bold]" in re.sub(r"\x1b\[[0-9;]*m", "", console.file.getvalue())


def test_rows_as_users_have_them(phi):
    """Issue 10 item 2: messages, prompt-completion and text rows are shown without collating by hand."""
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]
    view = trained_tokens({"messages": chat}, phi)
    assert view.trained_text() == " Hello there.<|end|>"  # the answer and its end of turn
    two = trained_tokens({"messages": [*chat, {"role": "user", "content": "<|assistant|> secret"}, chat[1]]}, phi)
    assert two.trained_text() == " Hello there.<|end|> Hello there.<|end|>"  # the structure, not the markers
    pc = trained_tokens({"prompt": [chat[0]], "completion": [chat[1]]}, phi)
    assert pc.trained_text() == view.trained_text()
    text = trained_tokens({"text": "Hello there."}, phi)
    assert text.n_trained == len(text.pieces)  # plain text: every token is a target (language modelling)
    from datasets import Dataset

    dataset = Dataset.from_list([{"messages": chat}, {"messages": chat[:1] + [{"role": "assistant", "content": "Yo"}]}])
    assert trained_tokens(dataset[:2], phi, row=1).trained_text() == " Yo<|end|>"  # columns, as dataset[:2] gives
    assert trained_tokens(dataset[1], phi).trained_text() == " Yo<|end|>"
    collator = DataCollatorForCompletionOnlyLM("<|assistant|>", tokenizer=phi)
    both = trained_tokens([{"messages": chat}, {"messages": chat}], phi, row=1, collator=collator)
    assert both.trained_text().strip().startswith("Hello there.")

