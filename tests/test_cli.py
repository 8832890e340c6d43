"""The command line: in-process through ``main(argv)``, and the real console script where a subprocess proves more
(the installed entry point, piped output, exit status and stderr as a shell sees them)."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from helpers import run_python_json
from trl_formatkit.cli import main

CHAT = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there."}]
SCRIPT = Path(sys.executable).with_name("trl-formatkit")  # the installed console script of this virtualenv


def run(*argv: str, width: int = 200) -> tuple[int, str, str]:
    """``main(argv)`` in this process, printing to a plain (uncoloured) console; returns (status, out, err)."""
    console = Console(file=io.StringIO(), width=width)
    err = io.StringIO()
    real_err, sys.stderr = sys.stderr, err
    try:
        status = main(list(argv), console=console)
    except SystemExit as exc:  # argparse
        status = exc.code
    finally:
        sys.stderr = real_err
    return status, console.file.getvalue(), err.getvalue()


def run_script(*args: str, module: bool = False) -> subprocess.CompletedProcess:
    """The real console script (or ``python -m trl_formatkit``), its output piped as in a log or CI."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "100"}
    env.pop("NO_COLOR", None)
    env.pop("TERM", None)
    cmd = [sys.executable, "-m", "trl_formatkit"] if module else [str(SCRIPT)]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, env=env, timeout=300)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def one_clean_line(err: str) -> None:
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


# -- the real console script ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_console_script_inspect_marks_trained_tokens_when_piped(tmp_path, tokenizer_path):
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"messages": CHAT}] * 3)
    result = run_script("inspect", "--tokenizer", str(tokenizer_path("phi-3-mini")), "--dataset", str(rows))
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout  # piped: no colour codes ...
    assert "<|assistant|>[ Hello there.<|end|>" in result.stdout  # ... and the trained span is still marked
    assert "Summary over 3 rows" in result.stdout and "every row trains something" in result.stdout


@pytest.mark.slow
def test_console_script_bad_arguments_are_one_line(tmp_path, tokenizer_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n{not json\n")
    chats = write_jsonl(tmp_path / "chats.jsonl", [{"messages": CHAT}])
    cases = {
        ("inspect", "--dataset", str(tmp_path / "missing.jsonl")): "no file",
        ("inspect", "--dataset", str(bad)): "line 2 is not JSON",
        ("inspect", "--tokenizer", str(tokenizer_path("llama-2")), "--dataset", str(chats), "--field", "messages"):
            "no chat template",
    }
    for args, expected in cases.items():
        result = run_script(*args)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        one_clean_line(result.stderr)
        assert expected in result.stderr


@pytest.mark.slow
def test_a_bad_dataset_is_said_before_the_tokenizer_is_loaded(tmp_path):
    """A missing or broken --dataset is answered at once: the rows are read before transformers is imported."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json\n")
    out = run_python_json(
        "import contextlib, io, json, sys\nfrom trl_formatkit.cli import main\nstatus = []\n"
        f"for path in {[str(tmp_path / 'missing.jsonl'), str(bad)]!r}:\n"
        "    with contextlib.redirect_stderr(io.StringIO()):\n"
        "        status.append(main(['inspect', '--dataset', path]))\n"
        "print(json.dumps([status, sorted(m for m in ('torch', 'transformers') if m in sys.modules)]))\n"
    )
    assert out == [[2, 2], []]


@pytest.mark.slow
def test_python_m_trl_formatkit_runs_the_demo_and_marks_trained_tokens():
    result = run_script("demo", module=True)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "phi-3-mini (bundled)" in out and "problems left: 0" in out
    assert "row 0: 22 of 38 tokens trained" in out and "row 1: 15 of 28 tokens trained" in out  # the yoda rows
    assert "row 0: 8 of 27 tokens trained" in out and "row 0: 13 of 27 tokens trained" in out  # multi-turn
    assert "row 0: 0 of 42 tokens trained" in out and "row 0: 21 of 42 tokens trained" in out  # the pitfall, fixed
    assert "[2277, 29937, 673, 29901]" in out  # the warning names the in-context ids
    assert "input_ids (1, 66)" in out and "13% padding" in out
    assert "<|assistant|>[ On the smooth planks," in out  # piped, and still marked
    assert ".py:" not in out and "warnings.warn" not in out  # warnings as text, not with file paths


# -- demo: the narration follows what happened ----------------------------------------------------------------
def _section(out: str, number: int) -> str:
    return re.split(r"\n(?=\d\. )", out)[number]


@pytest.mark.parametrize("name", ["gpt2", "qwen2", "llama-3"])
def test_demo_narration_follows_what_happened(name, tokenizer_path):
    status, out, _ = run("demo", "--tokenizer", str(tokenizer_path(name)))
    assert status == 0
    assert ".py:" not in out  # no raw warnings with file paths
    for number in (2, 3, 4, 5):
        section = _section(out, number)
        panels = [int(n) for n in re.findall(r"row \d+: (\d+) of \d+ tokens trained", section)]
        if "nothing trained" in section and number != 3:
            assert 0 in panels, section  # "nothing trained" only where a view shows 0
        said = [int(n) for n in re.findall(r"(\d+) tokens trained", re.sub(r"row \d+: \d+ of \d+ tokens trained", "", section))]
        assert all(n in panels or n == sum(panels) or number == 3 for n in said), section
    pitfall = _section(out, 4)
    if "encodes the same" in pitfall:  # gpt2, qwen2, llama-3: trl 0.19's exact matching finds it
        assert "nothing trained" not in pitfall and "19 tokens trained" in pitfall


# -- inspect --------------------------------------------------------------------------------------------------
def test_inspect_whole_dataset_summary_and_exit_status(tmp_path):
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"messages": CHAT}] * 5 + [{"messages": CHAT[:1]}])
    status, out, err = run("inspect", "--dataset", str(rows), "--rows", "1")
    assert status == 1, err  # a row trains nothing
    assert "row 0: 4 of 9 tokens trained" in out and "row 1:" not in out
    assert "Summary over 6 rows (format chatml" in out and "rows with nothing trained: 1 (rows 5)" in out
    assert "row 5: '<|user|> Hi<|end|>" in out  # a decoded preview
    status, out, _ = run("inspect", "--dataset", str(rows), "--json", "--max-length", "4", "--batch-size", "2")
    summary = json.loads(out)
    assert status == 1 and summary["exit_status"] == 1
    assert summary["rows"] == 6 and summary["n_rows_nothing_trained"] == 1 and summary["rows_nothing_trained"] == [5]
    assert summary["n_rows_cut_before_answer"] == 5 and summary["rows_truncated"] == 5  # 9 tokens; the last 4
    assert summary["tokens"] == 6 * 4 and summary["trained_tokens"] == 0  # <|user|> Hi<|end|><|assistant|>
    assert summary["length_percentiles"]["max"] == 9


def test_inspect_padding_and_percentiles(tmp_path):
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"text": "a " * n} for n in (1, 9, 1, 1)])
    status, out, _ = run("inspect", "--dataset", str(rows), "--json", "--batch-size", "2")
    summary = json.loads(out)
    lengths = [2, 10, 2, 2]  # BOS + the words (phi-3)
    assert status == 0 and summary["masks_from"] == "trainer" and summary["trained_fraction"] == 1.0
    assert summary["padding_fraction"] == round(1 - sum(lengths) / (2 * 10 + 2 * 2), 4)


def test_inspect_reads_json_csv_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pc = [{"prompt": "Q: 2+2?", "completion": " 4"}] * 2
    (tmp_path / "rows.json").write_text(json.dumps(pc))
    (tmp_path / "cols.json").write_text(json.dumps({"prompt": ["Q: 2+2?"], "completion": [" 4"]}))
    (tmp_path / "rows.csv").write_text("prompt,completion\nQ: 2+2?, 4\n")
    pq.write_table(pa.Table.from_pylist(pc), tmp_path / "rows.parquet")
    for name in ("rows.json", "cols.json", "rows.csv", "rows.parquet"):
        status, out, err = run("inspect", "--dataset", str(tmp_path / name), "--json")
        assert status == 0, (name, err)
        summary = json.loads(out)
        assert summary["format"] == "instruction" and summary["trained_tokens"] == summary["rows"] * 3  # " 4" + EOS


def test_inspect_collator_templates_and_html(tmp_path, tokenizer_path):
    llama = str(tokenizer_path("llama-2"))
    text = "### User: Hello\n\n### Assistant: Hi, how can I help you?"
    html = tmp_path / "view.html"
    status, out, _ = run("inspect", "--tokenizer", llama, "--response-template", "### Assistant:", "--text", text,
                         "--html", str(html))
    assert status == 0 and "8 of 20 tokens trained" in out and "masks from the collator" in out
    assert "background:#7d7" in html.read_text(encoding="utf-8")
    status, out, _ = run("inspect", "--tokenizer", llama, "--response-template", "### Assistant:", "--text", text,
                         "--exact")
    assert status == 1 and "0 of 20 tokens trained" in out and "tokenizes differently" in out
    status, _, err = run("inspect", "--tokenizer", llama, "--response-template", "### Assistant:", "--text", "x",
                         "--on-missing", "raise")
    assert status == 1 and "Traceback" not in err and err.startswith("trl-formatkit inspect:")


def test_inspect_markup_in_templates_and_data_is_text(tokenizer_path):
    """Issue 9 item 10: Llama-2's own "[/INST]" on a row without it printed a rich MarkupError."""
    llama = str(tokenizer_path("llama-2"))
    status, out, err = run("inspect", "--tokenizer", llama, "--response-template", "[/INST]", "--text",
                           "[INST] hello [bold]there[/bold] [/PAD]")
    assert status == 1, err
    assert "[/INST]" in out and "[bold]there[/bold] [/PAD]" in out and "MarkupError" not in out + err


def test_inspect_unescape_keeps_non_ascii_and_applies_to_templates(tokenizer_path):
    """Issue 9 item 11: --unescape garbled "café 日本" and left templates with a literal backslash-n."""
    qwen = str(tokenizer_path("qwen2"))
    text = r"<|im_start|>user\ncafé 日本<|im_end|>\n<|im_start|>assistant\noui<|im_end|>\n"
    template = r"<|im_start|>assistant\n"
    status, out, _ = run("inspect", "--tokenizer", qwen, "--text", text, "--response-template", template, "--unescape")
    assert status == 0 and "café 日本" in out and "[oui<|im_end|>" in out
    status, out, _ = run("inspect", "--tokenizer", qwen, "--text", text.replace(r"\n", "\n"), "--response-template",
                         template)
    assert status == 1 and "pass --unescape" in out  # the hint names the cause


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("inspect",), "give rows"),
        (("inspect", "--text", "x", "--max-length", "0"), "--max-length must be at least 1"),
        (("inspect", "--dataset", "owner/name"), "hub is off here"),
        (("inspect", "--dataset", "rows.txt"), "no file 'rows.txt'"),
        (("inspect", "--dataset", "rows.jsonl", "--format", "nope"), "nope"),
        (("inspect", "--text", "x", "--end-template", "<|end|>"), "need a --response-template"),
        (("audit", "--tokenizer", "/no/such/folder"), "no tokenizer folder"),
        (("audit", "--model", "/no/such/model"), "no config.json"),
        (("inspect", "--rows", "many"), "invalid int value"),
    ],
)
def test_bad_arguments_one_line_status_2(args, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_jsonl(tmp_path / "rows.jsonl", [{"messages": CHAT}])
    status, _, err = run(*args)
    assert status == 2
    one_clean_line(err)
    assert expected in err


def test_dataset_errors_name_the_line_and_the_column(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n\n[1, 2\n')
    status, _, err = run("inspect", "--dataset", str(bad))
    assert status == 2 and "line 3 is not JSON" in err
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "x"}])
    status, _, err = run("inspect", "--dataset", str(rows), "--field", "text")
    assert status == 2 and "row 0 has no 'text' field" in err
    status, _, err = run("inspect", "--dataset", str(rows))
    assert status == 2 and "prompt" in err  # an unknown schema: the columns seen


def test_old_file_and_field_arguments_still_work(tmp_path):
    rows = write_jsonl(tmp_path / "rows.jsonl", [{"messages": CHAT}, {"messages": CHAT}])
    status, out, _ = run("inspect", "--response-template", "<|assistant|>", "--file", str(rows), "--field",
                         "messages", "--padding-free")
    assert status == 0 and "row 0: 10 of 18 tokens trained" in out  # two chats, one flattened row


# -- audit and formats ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["phi-3-mini", "llama-2", "gpt2", "qwen2", "llama-3"])
def test_audit_exits_1_only_for_problems(name, tokenizer_path, load_tokenizer):
    from trl_formatkit import audit_tokenizer

    report = audit_tokenizer(load_tokenizer(name))
    status, out, _ = run("audit", "--tokenizer", str(tokenizer_path(name)), "--json")
    assert status == (1 if report.problems else 0)
    data = json.loads(out)
    assert [f["code"] for f in data["problems"]] == [f.code for f in report.problems]
    assert [f["code"] for f in data["notes"]] == [f.code for f in report.notes]


def test_audit_wraps_words_at_80_columns(tokenizer_path, load_tokenizer):
    from trl_formatkit import audit_tokenizer

    report = audit_tokenizer(load_tokenizer("phi-3-mini"))
    _, out, _ = run("audit", "--tokenizer", str(tokenizer_path("phi-3-mini")), width=80)
    assert max(len(line) for line in out.splitlines()) <= 80
    words = {w for f in [*report.problems, *report.notes] for w in f"{f.message} {f.fix}".split() if len(w) < 70}
    printed = set(out.split())
    assert words <= printed, sorted(words - printed)  # no word cut in two


def test_audit_model_folder(tmp_path, tokenizer_path):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=1000, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2).save_pretrained(tmp_path)
    status, out, _ = run("audit", "--tokenizer", str(tokenizer_path("gpt2")), "--model", str(tmp_path), "--json")
    assert status == 1 and "vocab-exceeds-embeddings" in [f["code"] for f in json.loads(out)["problems"]]


def test_formats_lists_each_format_and_who_provides_it():
    status, out, _ = run("formats")
    assert status == 0
    for name in ("alpaca", "chatml", "instruction", "sharegpt", "text"):
        assert re.search(rf"^{name}  columns: ", out, re.M)
    assert "trl-formatkit 0.1.0 (built in)" in out
    status, out, _ = run("formats", "--json")
    assert {row["name"] for row in json.loads(out)} >= {"alpaca", "chatml"}


def test_help_is_plain_text_with_exit_status(capsys):
    for argv in ([], ["inspect"], ["formats"], ["audit"]):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--help"])
        assert exc.value.code == 0
        out = capsys.readouterr().out
        assert "``" not in out and ":func:" not in out and "exit status" in out


def test_audit_rendering_keeps_markup_like_tokens_as_text():
    """Issue 9 item 10: a special token such as "[/PAD]" is printed as written by the CLI's audit view."""
    from trl_formatkit import audit_tokenizer
    from trl_formatkit._toy import toy_tokenizer
    from trl_formatkit.cli.audit_cmd import render_report

    console = Console(file=io.StringIO(), width=80)
    render_report(audit_tokenizer(toy_tokenizer(pad_token="[/PAD]", added_tokens=["[bold]"])), console)
    assert "'[/PAD]'" in console.file.getvalue()
