"""Where the host time of a training step goes: flattened vs dense batches, shape changes, the attention's dispatch.

A small model's eager training step is host-bound (the GPU waits for Python and kernel launches), so its wall clock
is the host's time. This script separates the causes issue 12 names, on the same model and the same tokens a step:

- ``limit``: dense equal-length rows, ``sdpa``, one shape every step;
- ``limit-var``: dense rows whose length changes every step (the same real tokens a step as ``flat``), ``sdpa``:
  what a new shape per step costs by itself;
- ``flat-const``: the ``limit``'s rows laid end to end as one flattened row with ``cu_seq_lens``, this package's
  attention: the flattened layout without shape changes;
- ``flat``: the collator's padding-free batches (a new token count every step), this package's attention;
- ``flat-sync``: ``flat`` with transformers' packed-sequence search left on (it reads a device value on the host
  every forward pass: what this package's attention skipped before 2026-11-23's fix);
- ``flat-op``: ``flat`` with the attention reached through torch's ``varlen_attn`` custom ops instead of the direct
  eager path (``kernels.EAGER_DIRECT = False``);
- ``flat-bucket``: ``flat`` with ``pad_to_multiple_of`` (the flattened row padded with one dummy sequence to a
  multiple of that many tokens), so that steps repeat a few shapes.

Each runs warm-up steps, then the timed steps back to back (sustained, one synchronisation at the end) and the
host-side time to issue them (no synchronisation: when the GPU is ahead of the host, this is the step time). A
profiled pass (CPU activity) lists the operators with the most host time per step. Writes ``host_time.json`` under
``--out`` and prints a table::

    python benchmarks/host_time.py --case 0.48b --out bench_out
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from padded_vs_flat import ASSISTANT, build_batches, make_tokenizer, model_inputs  # noqa: E402
from scale import CASES, _step, _sync, back_to_back, build_model, versions  # noqa: E402

CONFIGS = ("limit", "limit-var", "flat-const", "flat", "flat-sync", "flat-op", "flat-bucket")


def _pinned(batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    import torch

    if not torch.cuda.is_available():
        return batches
    return [{k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]


def _flat_rows(dense: dict[str, Any]) -> dict[str, Any]:
    """Dense equal-length rows as one flattened row with the collator's keys."""
    import torch

    rows, length = dense["input_ids"].shape
    cu = torch.arange(rows + 1, dtype=torch.int32) * length
    return {"input_ids": dense["input_ids"].reshape(1, -1), "labels": dense["labels"].reshape(1, -1),
            "position_ids": torch.arange(length).repeat(rows)[None], "cu_seq_lens_q": cu, "cu_seq_lens_k": cu,
            "max_length_q": length, "max_length_k": length}


def _variable_dense(data: dict[str, Any], rows: int) -> list[dict[str, Any]]:
    import torch

    out = []
    gen = torch.Generator().manual_seed(2)
    for tokens in data["real_tokens"]:
        ids = torch.randint(4, 32000, (rows, max(1, round(tokens / rows))), generator=gen)
        out.append({"input_ids": ids, "labels": ids.clone()})
    return out


def config_batches(name: str, data: dict[str, Any], tokenizer, bucket: int) -> list[dict[str, Any]]:
    if name == "limit":
        batches = data["dense"]
    elif name == "limit-var":
        batches = _variable_dense(data, data["batch_size"])
    elif name == "flat-const":
        batches = [_flat_rows(b) for b in data["dense"]]
    elif name == "flat-bucket":
        from trl_formatkit.collators import DataCollatorForCompletionOnlyLM

        collate = DataCollatorForCompletionOnlyLM([ASSISTANT], tokenizer=tokenizer, padding_free=True,
                                                  pad_to_multiple_of=bucket)
        batches = [collate(g) for g in data["groups"]]
    else:
        batches = data["flat"]
    return _pinned([model_inputs(b) for b in batches])


def _top_ops(model, batches, optimizer, device, top: int) -> list[dict[str, Any]]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for batch in batches:
            _step(model, batch, optimizer, device)
        _sync(device)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return [{"op": e.key, "calls_per_step": e.count / len(batches),
             "self_cpu_ms_per_step": e.self_cpu_time_total / 1000 / len(batches)} for e in events]


def _python_profile(model, batches, optimizer, device, top: int) -> list[dict[str, Any]]:
    """Python functions with the most own time per step (cProfile), to find host time outside the operators."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for batch in batches:
        _step(model, batch, optimizer, device)
    _sync(device)
    profiler.disable()
    stats = pstats.Stats(profiler).stats  # {(file, line, name): (calls, primitive, tottime, cumtime, callers)}
    rows = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:top]
    return [{"function": f"{Path(f).name}:{line}({name})", "calls_per_step": v[0] / len(batches),
             "own_ms_per_step": 1000 * v[2] / len(batches), "total_ms_per_step": 1000 * v[3] / len(batches)}
            for (f, line, name), v in rows]


def run_config(name: str, case: dict[str, Any], data, tokenizer, args) -> dict[str, Any]:
    from transformers import masking_utils

    from trl_formatkit.attention import kernels, register

    kernels.EAGER_DIRECT = name != "flat-op"
    attn = register() if name.startswith("flat") else "sdpa"
    skipping = masking_utils._preprocess_mask_arguments
    if name == "flat-sync":
        masking_utils._preprocess_mask_arguments = skipping.__formatkit_original__
    try:
        return _measure(name, attn, case, data, tokenizer, args)
    finally:
        masking_utils._preprocess_mask_arguments = skipping


def _measure(name: str, attn: str, case: dict[str, Any], data, tokenizer, args) -> dict[str, Any]:
    import gc

    import torch

    batches = config_batches(name, data, tokenizer, args.bucket)
    tokens = [int(b["input_ids"].numel()) if "limit" in name else n for b, n in zip(batches, data["real_tokens"])]
    model = build_model(case, attn, args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0, fused=args.device == "cuda")
    warm, timed = batches[: args.warmup], batches[args.warmup :]
    for batch in warm:
        _step(model, batch, optimizer, args.device)
    _sync(args.device)
    issue, passes = [], []
    for _ in range(args.passes):  # the first pass meets each shape for the first time, the next ones again
        issued, done = back_to_back(model, timed, optimizer, args.device)
        issue.append(issued)
        passes.append(done)
    row = {
        "config": name, "attn": attn, "real_tokens_per_step": sum(tokens[args.warmup :]) / len(timed),
        "sustained_ms_per_step": [1000 * s / len(timed) for s in passes],
        "host_issue_ms_per_step": [1000 * s / len(timed) for s in issue],
        "sustained_tokens_per_s": [sum(tokens[args.warmup :]) / s for s in passes],
        "shapes": len({tuple(b["input_ids"].shape) for b in timed}),
    }
    row["top_ops"] = _top_ops(model, timed[: args.profile], optimizer, args.device, args.top)
    if args.cprofile:
        row["python"] = _python_profile(model, timed[: args.profile], optimizer, args.device, args.top)
    del model, optimizer
    gc.collect()
    if args.device == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), default="0.48b")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--bucket", type=int, default=256, help="pad_to_multiple_of of flat-bucket")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--profile", type=int, default=3)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--cprofile", action="store_true", help="also profile the Python functions")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    case = CASES[args.case]
    tokenizer = make_tokenizer()
    data = build_batches("sft", args.warmup + args.steps, case["conversations"], seed=1, tokenizer=tokenizer)
    rows = []
    for name in args.configs.split(","):
        rows.append(run_config(name, case, data, tokenizer, args))
        r = rows[-1]
        print(f"{name:12s} shapes {r['shapes']:3d}  tok/step {r['real_tokens_per_step']:7.0f}  sustained ms/step "
              + " / ".join(f"{x:6.1f}" for x in r["sustained_ms_per_step"])
              + "  host issue ms/step " + " / ".join(f"{x:6.1f}" for x in r["host_issue_ms_per_step"]),
              flush=True)
    result = {"versions": versions() if args.device == "cuda" else {}, "case": args.case, "rows": rows}
    (args.out / "host_time.json").write_text(json.dumps(result, indent=1))
    for r in rows:
        print(f"--- {r['config']}: top host ops per step")
        for op in r["top_ops"][:12]:
            print(f"  {op['self_cpu_ms_per_step']:7.2f} ms  {op['calls_per_step']:6.0f}x  {op['op'][:70]}")
        for fn in r.get("python", [])[:15]:
            print(f"  py {fn['own_ms_per_step']:7.2f} ms own {fn['total_ms_per_step']:7.2f} total "
                  f"{fn['calls_per_step']:6.0f}x  {fn['function'][:70]}")
    print(json.dumps({r["config"]: round(statistics.median(r["sustained_tokens_per_s"])) for r in rows}))


if __name__ == "__main__":
    main()
