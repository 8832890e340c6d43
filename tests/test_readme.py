"""The README's examples run as written.

Every ```python block of README.md runs, in order, in one namespace that holds what the README assumes a reader
has: ``tokenizer`` (the real Phi-3-mini tokenizer), ``model`` (a tiny random-weight Llama sized for it),
``dataset`` (a few ``messages`` rows), trl's ``SFTConfig`` (for the CPU: ``use_cpu=True, bf16=False``) and
``SFTTrainer``. A block fenced ```python no-test
is skipped (the sentence above it says why: a GPU, a hub id). ```bash lines that run ``trl-formatkit`` run too,
in a folder that holds the files they name (``my-tokenizer/``, ``rows.jsonl``); a bad argument (status 2) fails.
"""

from __future__ import annotations

import functools
import io
import json
import re
import shlex
import warnings
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
FENCE = re.compile(r"^```(\w+)([^\n]*)\n(.*?)^```", re.M | re.S)
CHAT = [
    [{"role": "user", "content": "What is the capital of Chile?"}, {"role": "assistant", "content": "Santiago."}],
    [{"role": "user", "content": "Translate 'hola'."}, {"role": "assistant", "content": "Hello."}],
    [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4."},
     {"role": "user", "content": "And 3 + 3?"}, {"role": "assistant", "content": "6."}],
]


def blocks(language: str) -> list[tuple[int, str]]:
    """(line number, code) of each block of ``language`` (``no-test`` blocks left out)."""
    text = README.read_text(encoding="utf-8")
    found = []
    for m in FENCE.finditer(text):
        if m.group(1) == language and "no-test" not in m.group(2):
            found.append((text.count("\n", 0, m.start()) + 1, m.group(3)))
    return found


def commands(code: str) -> list[list[str]]:
    """The ``trl-formatkit`` command lines of a shell block (continuations joined, comments dropped)."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["trl-formatkit"]:
            out.append(words[1:])
        elif words[:3] == ["python", "-m", "trl_formatkit"]:
            out.append(words[3:])
    return out


@pytest.fixture
def namespace(load_tokenizer, tmp_path, monkeypatch):
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM
    from trl import SFTConfig, SFTTrainer

    monkeypatch.chdir(tmp_path)  # the trainer's output_dir and the files below land here
    tokenizer = load_tokenizer("phi-3-mini")
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
    tokenizer.save_pretrained(tmp_path / "my-tokenizer")
    (tmp_path / "rows.jsonl").write_text("".join(json.dumps({"messages": c}) + "\n" for c in CHAT))
    return {
        "__name__": "readme",
        "tokenizer": tokenizer,
        "model": LlamaForCausalLM(config),
        "dataset": Dataset.from_list([{"messages": c} for c in CHAT]),
        "SFTConfig": functools.partial(SFTConfig, use_cpu=True, bf16=False),  # this machine has no GPU
        "SFTTrainer": SFTTrainer,
    }


def test_readme_has_python_blocks():
    assert len(blocks("python")) >= 5


def test_readme_python_blocks_run_in_order(namespace, capsys):
    for line, code in blocks("python"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a reader sees warnings; the test checks that the code runs
            try:
                exec(compile(code, f"README.md:{line}", "exec"), namespace)
            except Exception as exc:
                pytest.fail(f"the ```python block at README.md line {line} raised {type(exc).__name__}: {exc}")
    capsys.readouterr()


def test_readme_cli_commands_run(namespace):
    from rich.console import Console

    from trl_formatkit.cli import main

    ran = 0
    for line, code in blocks("bash"):
        for argv in commands(code):
            if argv[:1] == ["demo"]:
                continue  # the demo has its own test (tests/test_cli.py)
            status = main(argv, console=Console(file=io.StringIO(), width=120))
            assert status in (0, 1), f"README.md line {line}: trl-formatkit {shlex.join(argv)} exited {status}"
            ran += 1
    assert ran >= 2
