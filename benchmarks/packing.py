"""``ConstantLengthDataset``: ours against trl 0.19.1's original, one pass over the same texts.

CPU only. Synthetic documents (words drawn at random, 1-400 words each) are packed into rows of ``--seq-length``
tokens with the default buffer (``num_of_sequences=1024``), ``shuffle=False``, by

1. ours (this checkout's interpreter: transformers 5.x);
2. trl 0.19.1's original, in the reference interpreter (``../ref-venv``: transformers 4.53), the same texts and
   arguments, through ``tests/reference/run_trl019_packing.py``'s machinery.

Both use the gpt2 tokenizer from the shared folder (byte-level BPE, tokenized alike by both transformers versions;
the rows are compared by hash). Each side also times its tokenizer alone on the same buffers, so what packing adds
is ``pass - tokenize``. Best of ``--repeats`` passes. Prints a table; ``--update-results benchmarks/RESULTS.md``
writes it as this benchmark's section::

    python benchmarks/packing.py --docs 20000 --update-results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import _results  # noqa: E402  (the shared results writer beside this file)
SECTION_START = "## packing (CPU)"
SECTION_END = _results.section_end("packing")
WORDS = ("the a of to and in is it you that was for on are with as I his they be at one have this from or had by "
         "Yoda Force Jedi planks canoe background sheet glue smooth birch 42 3.14 don't").split()

# Runs in either interpreter: times one pass of a ConstantLengthDataset class and the tokenizer alone.
PASS = r"""
import hashlib, json, sys, time, warnings
request = json.load(open(sys.argv[1]))
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(request["tokenizer"])
if request["side"] == "trl":
    from trl.trainer.utils import ConstantLengthDataset
else:
    from trl_formatkit import ConstantLengthDataset
data = [{"text": t} for t in request["texts"]]
best = {"pass": 1e9, "tokenize": 1e9}
for _ in range(request["repeats"]):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        packed = ConstantLengthDataset(tok, data, dataset_text_field="text", seq_length=request["seq_length"],
                                       shuffle=False)
    start = time.perf_counter()
    digest, rows, tokens = hashlib.sha256(), 0, 0
    for row in packed:
        digest.update(row["input_ids"].numpy().tobytes())
        rows, tokens = rows + 1, tokens + row["input_ids"].numel()
    best["pass"] = min(best["pass"], time.perf_counter() - start)
    start = time.perf_counter()
    tok(request["texts"], add_special_tokens=True, truncation=False)
    best["tokenize"] = min(best["tokenize"], time.perf_counter() - start)
import transformers
print(json.dumps({**best, "rows": rows, "tokens": tokens, "digest": digest.hexdigest(),
                  "transformers": transformers.__version__}))
"""


def texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 400))) for _ in range(n)]


def run_side(python: str, side: str, request: dict, tokenizer: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "request.json"
        path.write_text(json.dumps({**request, "side": side, "tokenizer": tokenizer}))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
        proc = subprocess.run([python, "-c", PASS, str(path)], capture_output=True, text=True, env=env,
                              cwd=ROOT if side == "ours" else tmp)
    if proc.returncode != 0:
        raise SystemExit(f"{side} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ref_tokenizer(src: Path, dst: Path) -> str:
    """A copy of the gpt2 folder with a tokenizer class transformers 4.x knows."""
    import shutil

    shutil.copytree(src, dst)
    config = json.loads((dst / "tokenizer_config.json").read_text())
    (dst / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "GPT2TokenizerFast"}))
    return str(dst)


def render(args, docs: list[str], results: dict[str, dict]) -> str:
    ours, trl = results["ours"], results["trl 0.19.1"]
    chars = sum(map(len, docs))
    lines = [
        SECTION_START, "",
        f"{len(docs)} synthetic documents ({chars:,} characters), gpt2 tokenizer, `seq_length={args.seq_length}`, "
        f"`num_of_sequences=1024`, `shuffle=False`, one full pass, best of {args.repeats}. Machine: "
        f"{platform.machine()}, {os.cpu_count()} CPUs ({platform.system()}, shared with other jobs); python "
        f"{platform.python_version()}; ours on transformers {ours['transformers']}, trl 0.19.1 on transformers "
        f"{trl['transformers']}. Same rows: {ours['digest'] == trl['digest']} ({ours['rows']} rows). Run: "
        f"`python benchmarks/packing.py --docs {args.docs} --update-results benchmarks/RESULTS.md`.", "",
        "| implementation | pass s | tokenizer alone s | packing (pass - tokenizer) s | tokens/s | speed-up |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, r in results.items():
        lines.append(f"| {name} | {r['pass']:.3f} | {r['tokenize']:.3f} | {r['pass'] - r['tokenize']:.3f} | "
                     f"{r['tokens'] / r['pass']:,.0f} | {trl['pass'] / r['pass']:.2f}x |")
    lines += ["", "Both tokenize each buffer in one batched call. The cutting into rows (pass - tokenizer) is where the "
              "implementations differ: trl 0.x extends a Python list per document and slices it, ours joins and "
              "reshapes with numpy. The rest of the gap is the tokenizer call itself: transformers 5's fast "
              "tokenizer on this side (and ours asks for no attention mask), 4.53's on the other.", SECTION_END, ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=20000)
    parser.add_argument("--seq-length", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--update-results", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "tests"))
    from book_facts import REF_PYTHON
    from conftest import tokenizers_dir

    gpt2 = tokenizers_dir() / "gpt2"
    docs = texts(args.docs)
    request = {"texts": docs, "seq_length": args.seq_length, "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "ours": run_side(sys.executable, "ours", request, str(gpt2)),
            "trl 0.19.1": run_side(str(REF_PYTHON), "trl", request, ref_tokenizer(gpt2, Path(tmp) / "gpt2")),
        }
    section = render(args, docs, results)
    print(section)
    if args.update_results:
        _results.update_results(args.update_results, "packing", section)


if __name__ == "__main__":
    main()
