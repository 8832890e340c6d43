"""The GPU benchmarks' own code, on the CPU with a tiny model: one step of ``scale.py`` and its results parser.

The numbers come from the GPU machine (``benchmarks/RESULTS.md``); this only keeps the scripts from rotting between
runs there (a broken script costs device time).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def scale(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import scale as module

    return module


def test_scale_runs_a_tiny_case_on_the_cpu_and_reads_its_own_lines(scale, tmp_path):
    scale.main(["--case", "tiny", "--device", "cpu", "--layouts", "flat,limit", "--steps", "1", "--warmup", "1",
                "--conversations", "2", "--profile", "0", "--out", str(tmp_path)])
    lines = [json.loads(x) for x in (tmp_path / "scale.jsonl").read_text().splitlines()]
    rows = [r for r in lines if "layout" in r]
    assert [r["layout"] for r in rows] == ["flat", "limit"]
    for r in rows:
        assert r["sustained_tokens_per_s"] > 0 and r["sustained_seen_tokens_per_s"] > 0
        assert 5 < r["first_step_loss"] < 15  # ~ln(32064) at random weights
    (tmp_path / "marked.jsonl").write_text(json.dumps({"run": "run X: test"}) + "\n" + "\n".join(
        json.dumps(r) for r in lines))
    runs = scale.runs_in(tmp_path / "marked.jsonl")
    assert list(runs) == ["run X: test"] and len(runs["run X: test"]) == 2
