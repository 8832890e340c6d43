"""Sustained training throughput at the sizes people train: padded vs flattened batches, eager and compiled.

Issue 12's benchmark. Random-weight Llama-style models, bf16, the same conversations a step in every layout (the SFT
length mix of ``padded_vs_flat.py``: log-normal, median 200 tokens, clipped to 24-2048), built by
``trl_formatkit``'s collator. Layouts: ``padded`` (right padding, transformers' ``sdpa``), ``flat`` (one row,
``padding_free=True``, ``trl_formatkit.attention``), ``limit`` (dense equal-length rows holding the same real tokens
per step, ``sdpa``: nothing to pad, no boundaries). Each configuration runs ``--warmup`` steps (compilation
included, timed as ``warmup_s``), then the timed steps twice: back to back with one synchronisation at the end
(**sustained**, the headline: how a training loop runs; first on shapes met for the first time, then again on shapes
seen once, as a later epoch) and with a synchronisation after every step (per-step median), then a few profiled
steps (GPU time per step by kernel category). Batches are pinned, as the Trainer's DataLoader pins them.

Cases (``--case``): ``0.48b`` (full fine-tuning, 16 conversations a step), ``1.5b`` (full fine-tuning, gradient
checkpointing, 16 a step), ``8b-lora`` (Llama-3-8B shapes, LoRA r=16 on q/k/v/o with peft, gradient checkpointing, 8
a step), ``8b-qlora`` (the same with the frozen weights in bitsandbytes NF4, as the chapter's QLoRA), ``tiny`` and
``tiny-qlora`` (smoke tests that also run on the CPU). ``--compiled`` compiles the model with ``torch.compile``:
flattened batches with ``dynamic=True`` (as ``trl_formatkit.SFTTrainer`` compiles them; one graph for every token
count), the others with default options; ``--regional`` compiles each decoder layer alone (one compilation shared by
all layers, as the trainer does through accelerate): at 1.5B, compiling the whole model did not finish its first
step in ten minutes. Compiled padded batches are padded to a fixed width (``--padded-width``, one shape: one
compilation) since every new padded width otherwise compiles again. ``--conversations`` overrides the conversations
per step (the equal-memory runs). Each finished configuration is appended to ``<out>/scale.jsonl`` at once, so a run
cut short keeps what it measured (the raw lines of the reported run:
``benchmarks/plots/scale.jsonl``; the tables in ``benchmarks/RESULTS.md`` are written from them by hand)::

    python benchmarks/scale.py --case 0.48b --layouts padded,flat,limit --out bench_out
    python benchmarks/scale.py --case 0.48b --layouts flat,limit --compiled --out bench_out
    python benchmarks/scale.py --case 1.5b --layouts flat,padded --compiled --regional --out bench_out
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results import tee  # noqa: E402
from padded_vs_flat import (  # noqa: E402
    ASSISTANT,
    EOS,
    PAD,
    USER,
    VOCAB,
    build_batches,
    make_tokenizer,
    model_inputs,
    versions,
)

CASES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden=128, layers=2, heads=4, kv_heads=2, inter=256, vocab=VOCAB, conversations=8, lora=False,
                 checkpointing=False),
    "0.48b": dict(hidden=1024, layers=24, heads=16, kv_heads=8, inter=4608, vocab=VOCAB, conversations=16,
                  lora=False, checkpointing=False),
    "1.5b": dict(hidden=2048, layers=28, heads=16, kv_heads=8, inter=5632, vocab=VOCAB, conversations=16,
                 lora=False, checkpointing=True),
    "8b-lora": dict(hidden=4096, layers=32, heads=32, kv_heads=8, inter=14336, vocab=128256, conversations=8,
                    lora=True, checkpointing=True),
    "8b-qlora": dict(hidden=4096, layers=32, heads=32, kv_heads=8, inter=14336, vocab=128256, conversations=8,
                     lora=True, checkpointing=True, qlora=True),
    "tiny-qlora": dict(hidden=128, layers=2, heads=4, kv_heads=2, inter=256, vocab=VOCAB, conversations=8, lora=True,
                       checkpointing=True, qlora=True),
}
CATEGORIES = (
    ("attention", ("flash", "fmha", "attn", "cudnn", "sdpa", "softmax")),
    ("matmul", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "matmul", "sm90")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("copies", ("memcpy", "memset", "copy")),
)


def _quantized(config, attn: str, device: str):
    """The random-weight model in bitsandbytes NF4 (double quantization, bf16 compute), as the chapter's QLoRA:
    saved once in bf16 to a temporary folder, loaded back quantized (transformers quantizes while loading)."""
    import tempfile

    import torch
    from peft import prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    folder = Path(tempfile.gettempdir()) / f"formatkit-scale-{config.hidden_size}x{config.num_hidden_layers}"
    if not (folder / "config.json").exists():
        torch.manual_seed(0)
        with torch.device(device):  # random init of 8B weights takes minutes on the CPU, seconds on a GPU
            dense = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
        dense.save_pretrained(folder)
        del dense
    nf4 = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                             bnb_4bit_compute_dtype=torch.bfloat16)
    model = LlamaForCausalLM.from_pretrained(folder, device_map=device, dtype=torch.bfloat16, quantization_config=nf4,
                                             attn_implementation=attn)
    return prepare_model_for_kbit_training(model, gradient_checkpointing_kwargs={"use_reentrant": False})


def build_model(case: dict[str, Any], attn: str, device: str):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=case["vocab"], hidden_size=case["hidden"], intermediate_size=case["inter"],
        num_hidden_layers=case["layers"], num_attention_heads=case["heads"], num_key_value_heads=case["kv_heads"],
        max_position_embeddings=4096, pad_token_id=PAD, bos_token_id=USER, eos_token_id=EOS,
        tie_word_embeddings=False, use_cache=False,
    )
    if case.get("qlora"):
        model = _quantized(config, attn, device)
    else:
        torch.manual_seed(0)
        with torch.device(device):
            model = LlamaForCausalLM._from_config(config, dtype=torch.bfloat16)
        model.set_attn_implementation(attn)
    if case["checkpointing"] and not case.get("qlora"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if case["lora"]:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, task_type="CAUSAL_LM",
                          target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
        model = get_peft_model(model, lora)
    model.train()
    return model


def batches_for(layout: str, data: dict[str, Any], padded_width: int | None, tokenizer) -> list[dict[str, Any]]:
    """The layout's batches, pinned where a GPU is there."""
    import torch

    if layout == "padded" and padded_width:
        from trl_formatkit.collators import DataCollatorForCompletionOnlyLM

        fixed = DataCollatorForCompletionOnlyLM([ASSISTANT], tokenizer=tokenizer, pad_to_multiple_of=padded_width)
        batches = [fixed(g) for g in data["groups"]]
    else:
        batches = data[{"padded": "padded", "flat": "flat", "limit": "dense"}[layout]]
    batches = [model_inputs(b) for b in batches]
    if torch.cuda.is_available():
        batches = [{k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in b.items()} for b in batches]
    return batches


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def _step(model, batch: dict[str, Any], optimizer, device: str):
    import torch

    inputs = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    loss = model(**inputs).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def _categories(prof) -> dict[str, float]:
    """Device time (ms, whole profiled run) of the kernels whose names fall in each category."""
    out = {name: 0.0 for name, _ in CATEGORIES} | {"other": 0.0}
    for event in prof.key_averages():
        us = getattr(event, "self_device_time_total", 0.0) or 0.0
        if us <= 0:
            continue
        name = event.key.lower()
        for category, needles in CATEGORIES:
            if any(n in name for n in needles):
                out[category] += us / 1000
                break
        else:
            out["other"] += us / 1000
    return out


def _profile(model, batches, optimizer, device: str) -> dict[str, Any]:
    import torch
    from torch.profiler import ProfilerActivity, profile

    _sync(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for batch in batches:
            _step(model, batch, optimizer, device)
        _sync(device)
    cats = {k: v / len(batches) for k, v in _categories(prof).items()}
    return {"gpu_ms": sum(cats.values()), "gpu_ms_by_category": cats}


def _dynamo_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def back_to_back(model, batches, optimizer, device: str) -> tuple[float, float]:
    """Seconds to issue ``batches`` as a training loop does (steps back to back), and until the GPU is done."""
    t0 = time.perf_counter()
    for batch in batches:
        _step(model, batch, optimizer, device)
    issued = time.perf_counter() - t0
    _sync(device)
    return issued, time.perf_counter() - t0


def measure(model, batches, tokens: list[int], warmup: int, device: str, profile_steps: int) -> dict[str, Any]:
    """Warm-up (compilation included), sustained, per-step and profiled steps on the same batches."""
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5, weight_decay=0.0,
                                  fused=device == "cuda")
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    graphs0 = _dynamo_graphs()
    t0 = time.perf_counter()
    first_loss = None
    for batch in batches[:warmup]:
        loss = _step(model, batch, optimizer, device)
        first_loss = float(loss.detach()) if first_loss is None else first_loss
    _sync(device)
    warmup_s = time.perf_counter() - t0
    graphs_warm = _dynamo_graphs()
    timed, timed_tokens = batches[warmup:], sum(tokens[warmup:])
    _, sustained_s = back_to_back(model, timed, optimizer, device)
    # again, every shape now seen once (cuDNN plans, cuBLAS heuristics, compiled graphs)
    _, seen_s = back_to_back(model, timed, optimizer, device)
    step_s = []
    for batch in timed:
        t0 = time.perf_counter()
        _step(model, batch, optimizer, device)
        _sync(device)
        step_s.append(time.perf_counter() - t0)
    result = {
        "first_step_loss": first_loss, "warmup_s": warmup_s, "graphs_after_warmup": graphs_warm - graphs0,
        "sustained_tokens_per_s": timed_tokens / sustained_s, "sustained_step_ms": 1000 * sustained_s / len(timed),
        "sustained_seen_tokens_per_s": timed_tokens / seen_s, "sustained_seen_step_ms": 1000 * seen_s / len(timed),
        "median_step_ms": 1000 * statistics.median(step_s),
        "median_tokens_per_s": statistics.median(n / s for n, s in zip(tokens[warmup:], step_s, strict=True)),
        "recompiles_after_warmup": _dynamo_graphs() - graphs_warm, "timed_steps": len(timed),
        "real_tokens_per_step": timed_tokens / len(timed),
    }
    if device == "cuda":
        if profile_steps:
            result.update(_profile(model, timed[:profile_steps], optimizer, device))
        result["peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return result


def run_one(args, case_name: str, layout: str, data, tokenizer, log) -> dict[str, Any]:
    import torch

    from trl_formatkit.attention import register

    case = dict(CASES[case_name], checkpointing=CASES[case_name]["checkpointing"] and not args.no_checkpointing)
    attn = register() if layout == "flat" else "sdpa"
    width = args.padded_width if (args.compiled and layout == "padded") else None
    batches = batches_for(layout, data, width, tokenizer)
    tokens = data["real_tokens"] if layout != "limit" else [int(b["input_ids"].numel()) for b in batches]
    row: dict[str, Any] = {"case": case_name, "layout": layout, "compiled": args.compiled, "attn": attn,
                           "conversations": data["batch_size"], "padded_width": width,
                           "checkpointing": case["checkpointing"]}
    model = None
    try:
        model = build_model(case, attn, args.device)
        row["params"] = sum(p.numel() for p in model.parameters())
        row["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        if args.compiled:
            # as trl_formatkit.SFTTrainer compiles padding-free batches: one graph for every token count
            row["dynamic"] = layout == "flat"
            dynamic = True if layout == "flat" else None
            if args.regional:  # each decoder layer compiled alone: one compilation serves every layer
                row["regional"] = True
                for module in model.modules():
                    if type(module).__name__.endswith("DecoderLayer"):
                        module.compile(dynamic=dynamic)
            else:
                model = torch.compile(model, dynamic=dynamic)
        row.update(measure(model, batches, tokens, args.warmup, args.device, 0 if args.compiled else args.profile))
    except torch.cuda.OutOfMemoryError as exc:
        row["oom"] = str(exc).splitlines()[0][:200]
    finally:
        del model
        import gc

        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
        torch._dynamo.reset()
    log(json.dumps(row))
    return row


LAYOUT_NAMES = {"padded": "padded + sdpa", "flat": "flattened + formatkit varlen",
                "limit": "limit (dense, equal length)"}


def runs_in(jsonl: Path) -> dict[str, list[dict[str, Any]]]:
    """The measured rows of ``scale.jsonl`` grouped under the ``{"run": ...}`` line before them."""
    runs: dict[str, list[dict[str, Any]]] = {}
    current = "unlabelled"
    for line in jsonl.read_text().splitlines():
        row = json.loads(line)
        if "run" in row:
            current = row["run"]
        elif "layout" in row and "oom" not in row:
            runs.setdefault(current, []).append(row)
    return runs


CASE_LABELS = {"0.48b": "0.48B full", "1.5b": "1.5B full", "8b-lora": "8B LoRA", "8b-qlora": "8B QLoRA"}


def plot(jsonl: Path, run_prefixes: list[str], png: Path) -> None:
    """Sustained tokens/s on shapes seen and peak memory per model and layout, from the runs of ``jsonl`` whose
    labels start with one of ``run_prefixes`` (a later run's row replaces an earlier one's of the same group)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = runs_in(jsonl)
    groups: dict[str, dict[str, dict[str, Any]]] = {}
    for name, rows in runs.items():
        if not name.startswith(tuple(run_prefixes)):
            continue
        for r in rows:
            label = CASE_LABELS.get(r["case"], r["case"])
            if r["conversations"] != CASES.get(r["case"], {}).get("conversations"):
                label += f", {r['conversations']} conv."
            groups.setdefault(label + ("\ncompiled" if r["compiled"] else ""), {})[r["layout"]] = r
    groups = dict(sorted(groups.items(), key=lambda item: "compiled" in item[0]))  # eager first, in run order
    fig, axes = plt.subplots(2, 1, figsize=(14, 9))
    width = 0.27
    for ax, key, title in ((axes[0], "sustained_seen_tokens_per_s", "sustained tokens/s, shapes seen (log)"),
                           (axes[1], "peak_gb", "peak GPU memory, GB")):
        for i, layout in enumerate(LAYOUT_NAMES):
            xs = [g + (i - 1) * width for g, rows in enumerate(groups.values()) if layout in rows]
            ys = [rows[layout].get(key, 0.0) for rows in groups.values() if layout in rows]
            bars = ax.bar(xs, ys, width, label=LAYOUT_NAMES[layout])
            ax.bar_label(bars, fmt="{:,.0f}" if key != "peak_gb" else "{:.1f}", fontsize=7)
        ax.set_xticks(range(len(groups)), list(groups), fontsize=8)
        ax.set_title(title)
        if key != "peak_gb":
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle("padded vs flattened batches on one H100 (benchmarks/scale.py)\ncompiled: 0.48B whole model, 1.5B and "
                 "8B one decoder layer at a time; compiled padded at one width, 2048")
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), default="0.48b")
    parser.add_argument("--layouts", default="padded,flat,limit")
    parser.add_argument("--compiled", action="store_true")
    parser.add_argument("--conversations", type=int, default=None)
    parser.add_argument("--padded-width", type=int, default=2048)
    parser.add_argument("--regional", action="store_true", help="with --compiled: compile each decoder layer alone")
    parser.add_argument("--no-checkpointing", action="store_true", help="without the case's gradient checkpointing")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--profile", type=int, default=3, help="profiled steps (eager runs)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--plot", type=Path, default=None, metavar="JSONL",
                        help="only draw <out>/scale.png from the runs of JSONL named by --plot-runs")
    parser.add_argument("--plot-runs", default="run B,run E,run C,run F,run G",
                        help="the runs to draw, comma-separated label prefixes")
    args = parser.parse_args(argv)
    if args.plot is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        plot(args.plot, [name.strip() for name in args.plot_runs.split(",")], args.out / "scale.png")
        return
    args.out.mkdir(parents=True, exist_ok=True)
    with tee(args.out / "scale.jsonl", "a") as log:
        _run(args, log)


def _run(args, log) -> None:
    import torch

    if args.device == "cuda":
        log(json.dumps({"versions": versions()}))
    torch.backends.cuda.matmul.allow_tf32 = False
    conversations = args.conversations or CASES[args.case]["conversations"]
    tokenizer = make_tokenizer()
    data = build_batches("sft", args.warmup + args.steps, conversations, seed=1, tokenizer=tokenizer)
    lengths = np.array(data["lengths"])
    padded = sum(int(b["input_ids"].numel()) for b in data["padded"])
    log(json.dumps({"data": {"case": args.case, "conversations": conversations, "mean_len": float(lengths.mean()),
                             "max_len": int(lengths.max()), "padding_fraction": 1 - sum(data["real_tokens"]) / padded,
                             "limit_length": data["dense_length"]}}))
    for layout in args.layouts.split(","):
        run_one(args, args.case, layout, data, tokenizer, log)


if __name__ == "__main__":
    main()
