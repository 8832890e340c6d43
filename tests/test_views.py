"""The trained-token views: ``trained_tokens``, ``show_trained`` (terminal, plain text, HTML)."""

from __future__ import annotations

import importlib.util

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
    assert str(view).startswith("<|user|> Hi<|end|><|assistant|>[ Hello][!]")
    flat = DataCollatorForCompletionOnlyLM("<|assistant|>", tokenizer=phi, padding_free=True, on_missing="ignore")
    fview = trained_tokens(flat(rows), phi)
    assert sum(fview.boundary) == 1 and fview.trained_text() == view.trained_text()
