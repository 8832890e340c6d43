"""Collator throughput on CPU: ``DataCollatorForCompletionOnlyLM`` against trl's and transformers' collators.

Synthetic multi-turn chats (random whole words from the phi-3-mini vocabulary, fixed seed, a few hundred tokens
each) are rendered with the phi-3-mini chat template and tokenized once. Then every collator turns the same rows
into the same batches (``--batch-size`` rows each), in alternating passes over all batches, and the median
tokens/s over ``--repeats`` passes is reported (real tokens only, padding not counted). Collators:

- ours, padded and ``padding_free=True``: labels computed from the templates (instruction ``<|user|>``, response
  ``<|assistant|>``; one run also with ``end_template="<|end|>"``), from the rows trl's ``SFTTrainer`` hands a
  collator (``input_ids`` and ``labels`` lists);
- trl's current ``DataCollatorForLanguageModeling`` (``trl.trainer.sft_trainer``), padded and padding-free, fed the
  same completion-only labels precomputed (what ``SFTTrainer`` builds during dataset preparation);
- transformers' ``DataCollatorWithFlattening`` (padding-free, ``return_flash_attn_kwargs=True``), fed the same;
- trl 0.19.1's original ``DataCollatorForCompletionOnlyLM`` in the reference interpreter (``--ref-python``,
  default ``../ref-venv/bin/python`` beside the checkout) in a subprocess, where it exists; not alternated with the others.

Before timing, the trained tokens of every collator are checked to be the same. Needs torch, transformers and the
real phi-3-mini tokenizer (``FORMATKIT_TOKENIZERS``, default ``../shared/tokenizers``); trl is optional (its
columns are skipped without it) and ``datasets`` is never imported. Prints a table with the machine and
versions and writes it into ``benchmarks/RESULTS.md`` under ``## collate (CPU)`` (``--results ''`` to skip)::

    python benchmarks/collate.py                        # make bench
    python benchmarks/collate.py --chats 1000 --repeats 3 --results ''   # a quick look

Speed is never asserted; on a shared machine the numbers move with the load, which the table reports.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402, F401  (loaded before the timed runs)

import _results  # noqa: E402  (benchmarks/ is sys.path[0])
from trl_formatkit import DataCollatorForCompletionOnlyLM  # noqa: E402

SECTION = "## collate (CPU)"
END_MARK = _results.section_end("collate")
RESPONSE, INSTRUCTION, END = "<|assistant|>", "<|user|>", "<|end|>"


# -- data ------------------------------------------------------------------------------------------------------
def tokenizer_dir() -> Path:
    env = os.environ.get("FORMATKIT_TOKENIZERS")
    path = Path(env) if env else ROOT.parent / "shared" / "tokenizers"
    if not (path / "phi-3-mini" / "tokenizer.json").is_file():
        sys.exit(f"phi-3-mini tokenizer not found under {path}: set FORMATKIT_TOKENIZERS to the shared/tokenizers "
                 "folder")
    return path


def make_chats(tok, n: int, seed: int) -> list[list[dict[str, str]]]:
    """``n`` chats: optional system turn, 1-3 user/assistant exchanges of random vocabulary words."""
    rng = random.Random(seed)
    words = sorted(
        piece[1:] for piece in tok.get_vocab() if piece.startswith("▁") and piece[1:].isalpha() and len(piece) > 3
    )
    words = rng.sample(words, 3000)

    def text(lo: int, hi: int) -> str:
        out = " ".join(rng.choice(words) for _ in range(rng.randint(lo, hi)))
        return out[0].upper() + out[1:] + rng.choice([".", "?", "!"])

    chats = []
    for _ in range(n):
        chat = [{"role": "system", "content": text(5, 20)}] if rng.random() < 0.3 else []
        for _ in range(rng.randint(1, 3)):
            chat += [{"role": "user", "content": text(10, 80)}, {"role": "assistant", "content": text(30, 140)}]
        chats.append(chat)
    return chats


def make_rows(tok, chats) -> list[dict[str, list[int]]]:
    """What trl's SFTTrainer hands a collator: ``input_ids`` and ``labels`` lists (completion-only labels)."""
    texts = [tok.apply_chat_template(chat, tokenize=False) for chat in chats]
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    labeller = DataCollatorForCompletionOnlyLM(RESPONSE, INSTRUCTION, tokenizer=tok, padding_free=True,
                                               return_tensors="np")
    flat = labeller([{"input_ids": row} for row in ids])["labels"][0]
    bounds = np.cumsum([0] + [len(row) for row in ids])
    return [{"input_ids": row, "labels": flat[a:b].tolist()}
            for row, (a, b) in zip(ids, itertools.pairwise(bounds), strict=True)]


# -- collators -------------------------------------------------------------------------------------------------
def build_collators(tok) -> dict[str, tuple[str, Callable]]:
    """name -> (mode, collate function). Rows go in as trl hands them (input_ids + labels lists)."""
    collators: dict[str, tuple[str, Callable]] = {
        "ours, padded": ("padded", DataCollatorForCompletionOnlyLM(RESPONSE, INSTRUCTION, tokenizer=tok)),
        "ours, padding-free": (
            "flat", DataCollatorForCompletionOnlyLM(RESPONSE, INSTRUCTION, tokenizer=tok, padding_free=True)),
        "ours, padding-free + end_template": (
            "flat",
            DataCollatorForCompletionOnlyLM(RESPONSE, INSTRUCTION, tokenizer=tok, padding_free=True, end_template=END),
        ),
    }
    try:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling
    except ImportError as exc:
        print(f"trl not importable ({exc}): its columns are skipped", file=sys.stderr)
    else:
        collators["trl 1.x DataCollatorForLanguageModeling, padded (precomputed labels)"] = (
            "padded", DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id))
        collators["trl 1.x DataCollatorForLanguageModeling, padding_free (precomputed labels)"] = (
            "flat", DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True))
    from transformers import DataCollatorWithFlattening

    collators["transformers DataCollatorWithFlattening (precomputed labels)"] = (
        "flat", DataCollatorWithFlattening(return_flash_attn_kwargs=True))
    return collators


def trained_tokens(batch, mode: str) -> list[list[int]]:
    """Trained label ids of each sequence, whatever the layout (to check the collators agree)."""
    labels = batch["labels"].numpy() if hasattr(batch["labels"], "numpy") else np.asarray(batch["labels"])
    if mode == "padded":
        return [row[row != -100].tolist() for row in labels]
    pos = batch["position_ids"]
    pos = pos.numpy() if hasattr(pos, "numpy") else np.asarray(pos)
    starts = np.flatnonzero(pos[0] == 0).tolist() + [labels.shape[1]]
    return [labels[0, a:b][labels[0, a:b] != -100].tolist() for a, b in itertools.pairwise(starts)]


def check_agreement(collators, batches, eos_id: int) -> None:
    """Every collator trains the same tokens (with ``end_template``, all but the EOS after the last answer)."""
    for batch_rows in batches[:20]:
        expected = None
        for name, (mode, collate) in collators.items():
            got = trained_tokens(collate(batch_rows), mode)
            if expected is None:
                expected, first = got, name
                continue
            want = [[t for t in seq if t != eos_id] for seq in expected] if "end_template" in name else expected
            if got != want:
                raise SystemExit(f"collators disagree on the trained tokens: {name!r} vs {first!r}")


def time_pass(collate: Callable, batches) -> float:
    start = time.perf_counter()
    for batch_rows in batches:
        collate(batch_rows)
    return time.perf_counter() - start


# -- trl 0.19 in its own interpreter -----------------------------------------------------------------------------
REF_CODE = r"""
import json, statistics, sys, time, warnings
warnings.simplefilter("ignore")
from transformers import AutoTokenizer
from trl import DataCollatorForCompletionOnlyLM
import trl
spec = json.load(open(sys.argv[1]))
tok = AutoTokenizer.from_pretrained(spec["tokenizer"])
tok.pad_token = tok.unk_token
rows = [{"input_ids": r} for r in spec["rows"]]
bs = spec["batch_size"]
batches = [rows[i:i + bs] for i in range(0, len(rows), bs)]
out = {"trl": trl.__version__}
for free in (False, True):
    c = DataCollatorForCompletionOnlyLM(spec["response"], spec["instruction"], tokenizer=tok, padding_free=free)
    for b in batches[:3]:
        c(b)
    times = []
    for _ in range(spec["repeats"]):
        t = time.perf_counter()
        for b in batches:
            c(b)
        times.append(time.perf_counter() - t)
    out["padding_free" if free else "padded"] = times
print(json.dumps(out))
"""


def run_trl019(ref_python: Path, tok_dir: Path, rows, batch_size: int, repeats: int) -> dict | None:
    if not ref_python.is_file():
        print(f"{ref_python} not found: trl 0.19 reference skipped", file=sys.stderr)
        return None
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "phi-3-mini"
        shutil.copytree(tok_dir / "phi-3-mini", copy)  # never edit the shared folder: edit a copy
        config = json.loads((copy / "tokenizer_config.json").read_text())
        config["tokenizer_class"] = "LlamaTokenizerFast"  # a class transformers 4.x knows
        (copy / "tokenizer_config.json").write_text(json.dumps(config))
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"tokenizer": str(copy), "rows": [r["input_ids"] for r in rows],
                                    "batch_size": batch_size, "repeats": repeats, "response": RESPONSE,
                                    "instruction": INSTRUCTION}))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
        proc = subprocess.run([str(ref_python), "-c", REF_CODE, str(spec)], capture_output=True, text=True,
                              env=env, cwd=tmp)
    if proc.returncode != 0:
        print(f"trl 0.19 reference failed:\n{proc.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- report ----------------------------------------------------------------------------------------------------
def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs ({platform.system()})"


def versions() -> str:
    env = _results.versions("numpy", "torch", "transformers", "trl", "trl_formatkit")
    return ", ".join(f"{k} {v}" for k, v in env.items())


def fmt(x: float) -> str:
    return f"{x / 1e6:.2f} M"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chats", type=int, default=4000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ref-python", type=Path, default=Path(os.environ.get("FORMATKIT_REF_PYTHON",
                                                                              ROOT.parent / "ref-venv" / "bin" / "python")))
    parser.add_argument("--no-ref", action="store_true", help="skip trl 0.19 in the reference interpreter")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "RESULTS.md"),
                        help="RESULTS.md to update ('' to only print)")
    args = parser.parse_args()
    warnings.simplefilter("ignore", DeprecationWarning)

    from transformers import AutoTokenizer

    tok_dir = tokenizer_dir()
    tok = AutoTokenizer.from_pretrained(str(tok_dir / "phi-3-mini"))
    tok.pad_token = tok.unk_token  # the book: PAD = UNK
    load_before = os.getloadavg()
    rows = make_rows(tok, make_chats(tok, args.chats, args.seed))
    n_tokens = sum(len(r["input_ids"]) for r in rows)
    batches = [rows[i : i + args.batch_size] for i in range(0, len(rows), args.batch_size)]
    collators = build_collators(tok)
    check_agreement(collators, batches, tok.eos_token_id)

    for _, collate in collators.values():  # warm-up
        time_pass(collate, batches[:10])
    times: dict[str, list[float]] = {name: [] for name in collators}
    names = list(collators)
    for r in range(args.repeats):  # alternate, rotating the order each repeat
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(time_pass(collators[name][1], batches))
    ref = None if args.no_ref else run_trl019(args.ref_python, tok_dir, rows, args.batch_size, args.repeats)
    load_after = os.getloadavg()

    speed = {name: n_tokens / statistics.median(t) for name, t in times.items()}
    best = {name: n_tokens / min(t) for name, t in times.items()}
    modes = {name: mode for name, (mode, _) in collators.items()}
    if ref is not None:
        for key, mode in (("padded", "padded"), ("padding_free", "flat")):
            name = f"trl {ref['trl']} DataCollatorForCompletionOnlyLM, {key} (ref venv, not alternated)"
            speed[name] = n_tokens / statistics.median(ref[key])
            best[name] = n_tokens / min(ref[key])
            modes[name] = mode
    base = {
        "padded": speed.get("trl 1.x DataCollatorForLanguageModeling, padded (precomputed labels)"),
        "flat": speed.get("trl 1.x DataCollatorForLanguageModeling, padding_free (precomputed labels)"),
    }
    lines = [
        "| collator | layout | tokens/s (median) | tokens/s (best pass) | batches/s (median) | vs trl 1.x, same layout |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, tps in speed.items():
        ratio = f"{tps / base[modes[name]]:.1f}x" if base[modes[name]] else "-"
        layout = "padded" if modes[name] == "padded" else "padding-free"
        lines.append(f"| {name} | {layout} | {fmt(tps)} | {fmt(best[name])} | {tps / n_tokens * len(batches):,.0f} "
                     f"| {ratio} |")
    table = "\n".join(lines)
    mean_len = n_tokens / len(rows)
    header = (
        f"{len(rows)} synthetic multi-turn chats (phi-3-mini chat template, mean {mean_len:.0f} tokens, "
        f"{n_tokens:,} tokens), batch size {args.batch_size}, {len(batches)} batches a pass, median of "
        f"{args.repeats} alternating passes; templates: instruction `{INSTRUCTION}`, response `{RESPONSE}`. "
        f"Tokens/s counts real tokens. Machine: {machine()}; {versions()}. Load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (shared machine: other jobs ran alongside). Run: "
        "`python benchmarks/collate.py` (`make bench`)."
    )
    ours_flat, ours_pad = speed["ours, padding-free"], speed["ours, padded"]
    targets = [f"padding-free {fmt(ours_flat)} tokens/s (target 10 M)"]
    if base["flat"]:
        targets.append(f"{ours_flat / base['flat']:.1f}x trl 1.x padding-free (target 5x)")
    if base["padded"]:
        targets.append(f"{ours_pad / base['padded']:.1f}x trl 1.x padded (target 3x)")
    note = "Issue #2 targets, this run: " + "; ".join(targets) + "."
    section = f"{SECTION}\n\n{header}\n\n{table}\n\n{note}\n{END_MARK}\n"
    print(section)
    if args.results:
        _results.update_results(Path(args.results), "collate", section)
        print(f"written to {args.results}")


if __name__ == "__main__":
    main()
