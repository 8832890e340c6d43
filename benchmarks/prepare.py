"""Dataset preparation: multi-turn chats -> labelled rows, ``encode_conversations`` against trl 1.x's own.

CPU only; needs ``datasets`` and ``trl``. The chats are ``collate.py``'s (random phi-3-mini vocabulary words, fixed
seed; an optional system turn and 1-3 user/assistant exchanges, so 2-7 messages, a few hundred tokens). Each
side turns a ``messages`` column into ``input_ids`` + ``labels`` (``-100`` outside the assistant's answers):

1. ``trl``: ``SFTTrainer._prepare_dataset`` of the installed trl with ``assistant_only_loss=True`` on the
   phi-3-mini tokenizer (trl swaps in its ``phi3_training.jinja``, phi-3's template with ``{% generation %}``
   markers): per-row ``apply_chat_template(return_assistant_tokens_mask=True)``, then a per-row labels ``map``.
   Called directly on a stand-in for the trainer (no model is built), ``max_length=None`` (no truncation);
2. ``trl_formatkit``: one batched ``map`` (1000 rows a batch) of :func:`trl_formatkit.encode_conversations` on
   phi-3's own template, labels built in the same pass with numpy.

Both at ``num_proc`` 1 and 2, each timed once on an in-memory dataset, progress bars off. Outputs are compared:
``input_ids`` equal, labels equal except the one documented difference (trl's template also trains the
``<|endoftext|>`` written once after the final answer; ``encode_conversations`` trains each turn's ``<|end|>``
and not that EOS). Prints a table and, with ``--update-results benchmarks/RESULTS.md``, writes its section::

    python benchmarks/prepare.py --rows 100000 --update-results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import _results  # noqa: E402  (the shared results writer beside this file)

SECTION_START = "## prepare (CPU)"
SECTION_END = _results.section_end("prepare")
IGNORE = -100
TRL = "trl 1.x `_prepare_dataset`, assistant_only_loss"
OURS = "trl_formatkit `encode_conversations`, batched map"
OURS_ONE_THREAD = "trl_formatkit, one tokenizer thread (`TOKENIZERS_PARALLELISM=false`)"


def ours_batch(batch: dict, tokenizer) -> dict:
    """One batched map step: ids and labels of a batch of conversations."""
    from trl_formatkit import encode_conversations

    out = encode_conversations(tokenizer, batch["messages"])
    lengths = np.fromiter(map(len, out["input_ids"]), dtype=np.int64, count=len(out["input_ids"]))
    ids = np.concatenate([np.asarray(row, dtype=np.int64) for row in out["input_ids"]])
    mask = np.concatenate([np.asarray(row, dtype=bool) for row in out["completion_mask"]])
    labels = np.where(mask, ids, IGNORE)
    return {"input_ids": out["input_ids"], "labels": [p.tolist() for p in np.split(labels, np.cumsum(lengths)[:-1])]}


def prepare_ours(ds, tok, num_proc: int):
    return ds.map(
        ours_batch,
        batched=True,
        batch_size=1000,
        fn_kwargs={"tokenizer": tok},
        remove_columns=ds.column_names,
        num_proc=num_proc if num_proc > 1 else None,
        load_from_cache_file=False,
    )


def prepare_ours_one_thread(ds, tok, num_proc: int):
    """Ours with the tokenizers library's threads off: the batched call then uses one core, as trl's per-row
    calls do."""
    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        return prepare_ours(ds, tok, num_proc)
    finally:
        if before is None:
            del os.environ["TOKENIZERS_PARALLELISM"]
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before


def prepare_trl(ds, tok, num_proc: int):
    """trl's own preparation, as ``SFTTrainer.__init__`` runs it for ``assistant_only_loss=True``."""
    from trl import SFTConfig, SFTTrainer
    from trl.chat_template_utils import get_training_chat_template

    args = SFTConfig(
        output_dir="/tmp/formatkit-prepare-bench", assistant_only_loss=True, max_length=None,
        dataset_num_proc=num_proc if num_proc > 1 else None, report_to=[], bf16=False, use_cpu=True,
    )  # fmt: skip
    trainer = SimpleNamespace(  # what _prepare_dataset reads from the trainer
        _tokenizer=tok, chat_template=get_training_chat_template(tok), completion_only_loss=False
    )
    return SFTTrainer._prepare_dataset(trainer, ds, tok, args, packing=False, formatting_func=None, dataset_name="b")


def compare(trl_out, ours_out, eos_id: int) -> str:
    """Check the outputs agree (the documented final-EOS difference aside); a line saying what was compared."""
    assert trl_out["input_ids"] == ours_out["input_ids"], "input_ids differ"
    differ = 0
    for ids, a, b in zip(trl_out["input_ids"], trl_out["labels"], ours_out["labels"], strict=True):
        if a != b:
            assert a[:-1] == b[:-1] and ids[-1] == eos_id and a[-1] == eos_id and b[-1] == IGNORE, (ids, a, b)
            differ += 1
    trained = sum(sum(1 for x in row if x != IGNORE) for row in ours_out["labels"])
    return (
        f"input_ids equal in all {len(ours_out)} rows; labels equal except the final `<|endoftext|>` that trl's "
        f"template trains in {differ} rows (every row ends with an answer); {trained:,} trained tokens (ours)"
    )


def machine() -> str:
    from collate import machine as cpu

    return cpu()


def versions() -> str:
    import datasets
    import tokenizers
    import transformers
    import trl

    import trl_formatkit

    return (
        f"python {platform.python_version()}, numpy {np.__version__}, datasets {datasets.__version__}, "
        f"tokenizers {tokenizers.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
        f"trl_formatkit {trl_formatkit.__version__}"
    )


def run(rows: int, procs: list[int]) -> tuple[list[tuple[str, int, float]], str, dict]:
    import datasets
    from collate import make_chats, tokenizer_dir
    from transformers import AutoTokenizer

    datasets.disable_progress_bars()
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir() / "phi-3-mini"))
    ds = datasets.Dataset.from_dict({"messages": make_chats(tok, rows, seed=0)})
    results, outputs = [], {}
    configs = []
    for num_proc in procs:
        configs += [(TRL, num_proc, prepare_trl), (OURS, num_proc, prepare_ours)]
        if num_proc == 1:
            configs.append((OURS_ONE_THREAD, num_proc, prepare_ours_one_thread))
    for name, num_proc, prepare in configs:
        start = time.perf_counter()
        out = prepare(ds, tok, num_proc)
        results.append((name, num_proc, time.perf_counter() - start))
        outputs[(name, num_proc)] = out
        print(f"{name}, num_proc={num_proc}: {results[-1][2]:.1f} s", file=sys.stderr)
    trl_out, ours_out = outputs[(TRL, procs[0])], outputs[(OURS, procs[0])]
    note = compare(trl_out, ours_out, tok.eos_token_id)
    for (name, num_proc), out in outputs.items():
        if name != TRL:
            assert out["labels"] == ours_out["labels"] and out["input_ids"] == ours_out["input_ids"], (name, num_proc)
    lengths = np.fromiter(map(len, ours_out["input_ids"]), dtype=np.int64)
    messages = float(np.mean([len(chat) for chat in ds["messages"]]))
    stats = {"tokens": int(lengths.sum()), "mean": float(lengths.mean()), "messages": messages}
    return results, note, stats


def render(rows: int, results, note: str, stats: dict, load: tuple[str, str]) -> str:
    by_proc = {p: t for name, p, t in results if name == TRL}
    lines = [
        SECTION_START,
        "",
        f"{rows:,} synthetic multi-turn chats (`collate.py`'s: phi-3-mini vocabulary words, {stats['messages']:.1f} "
        f"messages and {stats['mean']:.0f} tokens a chat on average, {stats['tokens']:,} tokens) -> `input_ids` + "
        "`labels`, in memory, each configuration timed once. trl: `SFTTrainer._prepare_dataset` with "
        "`assistant_only_loss=True` (its `phi3_training.jinja`, per-row `apply_chat_template` with assistant masks, "
        "then a labels `map`); ours: one batched `map` of `encode_conversations` (labels in the same pass). "
        f"Machine: {machine()}; {versions()}. Load average (`uptime`) {load[0]} before, {load[1]} after "
        "(a shared machine: other jobs ran alongside). "
        f"Run: `python benchmarks/prepare.py --rows {rows} --update-results benchmarks/RESULTS.md`.",
        "",
        "| preparation | num_proc | seconds | rows/s | vs trl, same num_proc |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, num_proc, seconds in results:
        lines.append(
            f"| {name} | {num_proc} | {seconds:.1f} | {rows / seconds:,.0f} | {by_proc[num_proc] / seconds:.1f}x |"
        )
    lines += [
        "",
        f"Output check: {note}; every configuration of ours gives the same rows.",
        "",
        "Where the time goes: tokenizing the rendered text is the same work on both sides (phi-3-mini's tokenizer "
        "has no pre-tokenizer, so BPE runs over whole turns) and is most of ours; trl adds a per-row "
        "`apply_chat_template` with assistant masks (rendering, `char_to_token` per generation span) and a "
        "second per-row `map` for labels. The batched tokenizer call of ours uses the tokenizers library's "
        "threads even at `num_proc=1` (the one-thread row turns them off); with `num_proc=2` the tokenizers "
        "library turns its threads off in the forked workers.",
        SECTION_END,
    ]
    return "\n".join(lines) + "\n"


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--update-results", type=Path, default=None)
    args = parser.parse_args(argv)
    before = load_average()
    results, note, stats = run(args.rows, args.num_proc)
    section = render(args.rows, results, note, stats, (before, load_average()))
    print(section)
    if args.update_results:
        _results.update_results(args.update_results, "prepare", section)


if __name__ == "__main__":
    main()
