"""The real CLI in a subprocess, and the trained-token view it renders."""

from __future__ import annotations

import json
import os
import subprocess
import sys



def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "HF_HUB_OFFLINE": "1", "TERM": "dumb"}
    return subprocess.run(
        [sys.executable, "-m", "trl_formatkit.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def test_demo_runs_offline_on_the_bundled_tokenizer():
    result = run_cli("demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "phi-3-mini (bundled)" in out
    assert "pad-equals-eos" in out and "PAD is now '<unk>' (0)" in out and "problems left: 0" in out
    assert "row 0: 22 of 38 tokens trained" in out and "row 1: 15 of 28 tokens trained" in out  # the yoda rows
    assert "row 0: 8 of 27 tokens trained" in out and "row 0: 13 of 27 tokens trained" in out  # multi-turn
    assert "row 0: 0 of 42 tokens trained" in out and "row 0: 21 of 42 tokens trained" in out  # the pitfall, fixed
    assert "[2277, 29937, 673, 29901]" in out  # the warning names the in-context ids
    assert "input_ids (1, 66)" in out and "13% padding" in out


def test_inspect_text_and_exact_matching(tokenizer_path):
    llama = str(tokenizer_path("llama-2"))
    text = "### User: Hello\n\n### Assistant: Hi, how can I help you?"
    ok = run_cli("inspect", "--tokenizer", llama, "--response-template", "### Assistant:", "--text", text)
    assert ok.returncode == 0, ok.stderr
    assert "8 of 20 tokens trained" in ok.stdout
    bad = run_cli("inspect", "--tokenizer", llama, "--response-template", "### Assistant:", "--text", text, "--exact")
    assert bad.returncode == 1  # a warning was shown: something trains nothing
    assert "0 of 20 tokens trained" in bad.stdout and "tokenizes differently" in bad.stdout


def test_audit_exit_code_names_problems(tokenizer_path):
    bad = run_cli("audit", "--tokenizer", str(tokenizer_path("gpt2")))
    assert bad.returncode == 1
    assert "bos-equals-eos" in bad.stdout and "pad-missing" in bad.stdout and "fix_special_tokens" in bad.stdout
    generation = run_cli("audit", "--tokenizer", str(tokenizer_path("llama-2")), "--purpose", "generation")
    assert generation.returncode == 1 and "padding" in generation.stdout


def test_inspect_jsonl_messages(tmp_path):
    rows = tmp_path / "rows.jsonl"
    chat = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]
    rows.write_text(json.dumps({"messages": chat}) + "\n\n" + json.dumps({"messages": chat}) + "\n")
    result = run_cli("inspect", "--response-template", "<|assistant|>", "--file", str(rows), "--field", "messages",
                     "--padding-free")
    assert result.returncode == 0, result.stderr
    assert "row 0: 10 of 18 tokens trained" in result.stdout  # two chats, one flattened row


def test_inspect_errors_are_readable(tmp_path):
    result = run_cli("inspect", "--response-template", "<|assistant|>")
    assert result.returncode != 0 and "--text" in result.stderr
    result = run_cli("inspect", "--tokenizer", str(tmp_path / "nope"), "--response-template", "x", "--text", "x")
    assert result.returncode != 0 and "no tokenizer folder" in result.stderr
    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "x"}) + "\n")
    result = run_cli("inspect", "--response-template", "x", "--file", str(rows))
    assert result.returncode != 0 and "line 1" in result.stderr and "'text'" in result.stderr
