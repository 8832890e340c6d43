"""Several processes: ``trl_formatkit.SFTTrainer`` under ``torchrun`` with 2 CPU processes (gloo), as CI can run it.

One real run of ``examples/accelerate/sft.py`` (the script the GPU runs use too): a tiny random-weight Llama, the
phi-3-mini tokenizer, rows in the dolly format that only an entry-point plugin knows (installed for the run as
site-packages sees a package: a ``.dist-info`` with ``entry_points.txt`` on ``PYTHONPATH``), completion-only
labels from the conversation's structure, padding-free batches, ``bfd`` packing. Each process writes what it
fed the model and what it said (``--report``); the checks:

- the run completes in both processes and the loss falls;
- per-process batches are whole prepared sequences: every sequence in a batch (positions restarting at 0) is one
  prepared row's tokens with its labels, none is split, and the two processes get different sequences;
- the main process prepares first: the other one starts its whole-dataset check after the main one finished
  its own, and reuses the main one's ``datasets`` cache files;
- the tokenizer audit's fix and the count of dropped rows are said once (by rank 0), not once per process;
- the plugin's format is known in every process (each converted the dolly rows).

Ports under pytest-xdist: ``torchrun --standalone`` binds its rendezvous store to port 0 (the OS picks a free one,
atomically) and its workers reuse that store for the process group, so no two jobs can pick the same port; and
``make test`` sends this whole file to one worker (``--dist loadfile``), so its two jobs run one after the other.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("accelerate")
torch = pytest.importorskip("torch")

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "examples" / "accelerate" / "sft.py"
ROWS, LONG_PROMPTS = 40, 2


def _install_dolly_plugin(target: Path) -> Path:
    """The README's plugin module plus the metadata pip would write for it: found through the entry point only."""
    target.mkdir()
    shutil.copy(REPO_ROOT / "examples" / "format_plugin" / "formatkit_dolly.py", target)
    info = target / "formatkit_dolly-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: formatkit-dolly\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[trl_formatkit.plugins]\ndolly = formatkit_dolly\n")
    return target


@pytest.fixture(scope="module")
def run(tokenizer_path, tmp_path_factory):
    """Both processes' reports (rank 0, rank 1)."""
    tmp = tmp_path_factory.mktemp("two-processes")
    plugin = _install_dolly_plugin(tmp / "site")
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(plugin), env.get("PYTHONPATH")])),
        FORMATKIT_TOKENIZERS=str(tokenizer_path("phi-3-mini").parent), HF_DATASETS_CACHE=str(tmp / "hf"),
        HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", OMP_NUM_THREADS="1",
        TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="",
    )
    report = tmp / "report"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(SCRIPT),
           "--model", "tiny", "--data", "dolly", "--rows", str(ROWS), "--long-prompts", str(LONG_PROMPTS),
           "--words", "12", "--max-length", "160", "--batch", "2", "--steps", "3", "--lr", "5e-3",
           "--warmup-steps", "0", "--report", str(report)]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return [json.loads((report / f"rank{rank}.json").read_text()) for rank in (0, 1)]


def _segments(batch: dict) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(input_ids, labels) of each sequence in a padding-free batch (positions restart at 0)."""
    ids, labels, positions = (torch.tensor(batch[k][0]) for k in ("input_ids", "labels", "position_ids"))
    starts = (positions == 0).nonzero().flatten().tolist() + [len(ids)]
    return [(tuple(ids[a:b].tolist()), tuple(labels[a:b].tolist())) for a, b in zip(starts, starts[1:])]


def _prepared_sequences(prepared: dict) -> dict[tuple[int, ...], tuple[int, ...]]:
    """Each packed row split by its ``seq_lengths``: input_ids -> labels (the first label -100, as trl's
    padding-free collator writes it: a sequence's start is never predicted from the previous one)."""
    out = {}
    for ids, labels, lengths in zip(prepared["input_ids"], prepared["labels"], prepared["seq_lengths"], strict=True):
        start = 0
        for n in lengths:
            out[tuple(ids[start:start + n])] = (-100, *labels[start + 1:start + n])
            start += n
    return out


def test_both_processes_train(run):
    assert [r["rank"] for r in run] == [0, 1] and all(r["world_size"] == 2 for r in run)
    losses = run[0]["losses"]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_batches_hold_whole_prepared_sequences_with_their_labels(run, load_tokenizer):
    tok = load_tokenizer("phi-3-mini")
    prepared = _prepared_sequences(run[0]["prepared"])
    assert len(prepared) == ROWS - LONG_PROMPTS  # the rows that train nothing were dropped (and counted)
    first = []
    for report in run:
        assert report["batches"], f"rank {report['rank']} recorded no batch"
        for batch in report["batches"]:
            for ids, labels in _segments(batch):
                assert prepared.get(ids) == labels, "a sequence was split, mixed or relabelled"
                trained = tok.decode([i for i, label in zip(ids, labels, strict=True) if label != -100])
                assert trained.startswith("Answer ") and trained.endswith("<|end|>"), trained
                assert "<|user|>" in tok.decode(ids) and "<|user|>" not in trained
        first.append({ids for ids, _ in _segments(report["batches"][0])})
    assert not first[0] & first[1], "both processes trained on the same sequences in the first step"


def test_main_process_prepares_first_and_the_other_reuses_its_cache(run):
    (main_start, main_end), (other_start, other_end) = run[0]["checks"][0], run[1]["checks"][0]
    assert other_start >= main_end, "rank 1 checked the dataset while rank 0 was still preparing it"
    cached = [line for line in run[1]["logs"] if "Loading cached processed dataset" in line]
    assert cached, "rank 1 recomputed the preparation instead of reading rank 0's cache files"
    assert not [line for line in run[0]["logs"] if "Loading cached processed dataset" in line]


def test_findings_are_said_once_per_job(run):
    ours = [[line for line in r["logs"] if line.startswith("trl_formatkit")] for r in run]
    assert any("fixed the tokenizer (pad-equals-eos)" in line for line in ours[0])
    assert any(f"dropped {LONG_PROMPTS} of {ROWS} rows" in line for line in ours[0])
    assert ours[1] == [], f"rank 1 repeated: {ours[1]}"
    assert not [w for w in run[1]["warnings"] if w.startswith("FormatKitWarning")]


FAILING_MAIN = """
from trl_formatkit.distributed import main_process_first, process_index
try:
    with main_process_first():
        raise ValueError("most rows train nothing")
except ValueError:
    print(f"stopped {process_index()}", flush=True)
"""


def test_an_error_in_the_main_process_block_stops_every_process(tmp_path):
    """accelerate's main_process_first skips the main process's barrier when its block raises, leaving the others
    waiting until the process group's timeout (30 minutes); ours lets them through to meet the same error."""
    script = tmp_path / "failing_main.py"
    script.write_text(FAILING_MAIN)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(line for line in proc.stdout.splitlines() if line.startswith("stopped")) == ["stopped 0",
                                                                                                "stopped 1"]
