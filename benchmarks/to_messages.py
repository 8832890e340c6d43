"""``to_messages`` (one batched ``Dataset.map``) against the per-row ``map`` the book's Korean edition uses.

CPU only; needs ``datasets``. Synthetic prompt/completion rows (the book's yoda sentences, repeated with an index)
are converted to a ``messages`` column three ways:

1. ``per-row map``: the Korean edition's ``format_dataset`` (In [13]) with ``dataset.map(format_dataset)`` and
   then ``remove_columns``, as the chapter does;
2. ``to_messages``: one batched ``map`` (1000 rows a batch), consumed columns dropped in the same pass;
3. ``to_messages, num_proc=2``.

Each is timed (best of ``--repeats``) on an in-memory dataset, progress bars off; the outputs are checked to be
equal. Prints a table and, with ``--update-results benchmarks/RESULTS.md``, writes it as this benchmark's section::

    python benchmarks/to_messages.py --rows 20000 --update-results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import _results  # benchmarks/ is sys.path[0]

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SECTION_START = "## to_messages (CPU)"
SECTION_END = _results.section_end("to_messages")

PROMPTS = ["The birch canoe slid on the smooth planks.", "Glue the sheet to the dark blue background."]
COMPLETIONS = [
    "On the smooth planks, the birch canoe slid. Yes, hrrrm.",
    "Glue the sheet to the dark blue background, you must.",
]


def format_dataset(examples):
    """The Korean edition's In [13], verbatim."""
    if isinstance(examples["prompt"], list):
        output_texts = []
        for i in range(len(examples["prompt"])):
            converted_sample = [
                {"role": "user", "content": examples["prompt"][i]},
                {"role": "assistant", "content": examples["completion"][i]},
            ]
            output_texts.append(converted_sample)
        return {"messages": output_texts}
    else:
        converted_sample = [
            {"role": "user", "content": examples["prompt"]},
            {"role": "assistant", "content": examples["completion"]},
        ]
        return {"messages": converted_sample}


def best_of(repeats: int, fn):
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def run(rows: int, repeats: int) -> tuple[list[tuple[str, float]], dict]:
    import datasets
    from datasets import Dataset

    from trl_formatkit import to_messages

    datasets.disable_progress_bars()
    ds = Dataset.from_dict(
        {
            "prompt": [f"{PROMPTS[i % 2]} ({i})" for i in range(rows)],
            "completion": [f"{COMPLETIONS[i % 2]} ({i})" for i in range(rows)],
        }
    )
    results = []
    t, baseline = best_of(
        repeats, lambda: ds.map(format_dataset, load_from_cache_file=False).remove_columns(["prompt", "completion"])
    )
    results.append(("per-row map (Korean edition, In [13])", t))
    t, ours = best_of(repeats, lambda: to_messages(ds, load_from_cache_file=False))
    results.append(("to_messages (batched map)", t))
    assert ours["messages"] == baseline["messages"], "to_messages differs from the per-row conversion"
    t, ours2 = best_of(repeats, lambda: to_messages(ds, num_proc=2, load_from_cache_file=False))
    results.append(("to_messages, num_proc=2", t))
    assert ours2["messages"] == baseline["messages"]
    env = {
        **_results.versions("datasets", "pyarrow", "trl_formatkit"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs ({platform.processor() or platform.system()})",
    }
    return results, env


def render(rows: int, repeats: int, results, env) -> str:
    base = results[0][1]
    lines = [
        SECTION_START,
        "",
        f"{rows} prompt/completion rows -> `messages`, in memory, best of {repeats}; "
        + ", ".join(f"{k} {v}" for k, v in env.items())
        + ". Run: `python benchmarks/to_messages.py --rows "
        + f"{rows} --update-results benchmarks/RESULTS.md`.",
        "",
        "| conversion | seconds | rows/s | speed-up |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, seconds in results:
        lines.append(f"| {name} | {seconds:.3f} | {rows / seconds:,.0f} | {base / seconds:.1f}x |")
    lines += [
        "",
        "On a shared 2-core machine `num_proc=2` pays process start-up and pickling; it helps on larger datasets "
        "and more cores.",
        SECTION_END,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--update-results", type=Path, default=None)
    args = parser.parse_args(argv)
    results, env = run(args.rows, args.repeats)
    section = render(args.rows, args.repeats, results, env)
    print(section)
    if args.update_results:
        _results.update_results(args.update_results, "to_messages", section)


if __name__ == "__main__":
    main()
