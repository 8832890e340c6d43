"""Padded vs flattened (padding-free) batches on a GPU: real-token throughput, peak memory, loss equivalence.

Runs with torch and transformers only (no trl, datasets, flash-attn); bitsandbytes + peft for the QLoRA rows
where they are installed. Needs a CUDA GPU (Ampere or newer)::

    python benchmarks/padded_vs_flat.py --out bench_out            # everything (about 4 minutes on an H100)
    python benchmarks/padded_vs_flat.py --quick --out bench_out    # a small model, few steps: a smoke test

What it measures, on the same batches for every configuration:

1. ``check``: bf16 accuracy of ``trl_formatkit.attention`` on tiny random Llama / Qwen2 / Mistral / Phi-3 models:
   logits and parameter gradients of a flattened batch (this attention) against the padded batch (``sdpa``), and
   both against a float32 reference; plus the kernel against the exact per-sequence fallback.
2. ``speed``: a ~0.5B-parameter Llama-style model with random weights, bf16, AdamW, full forward + backward +
   optimizer step, on two length distributions: ``sft`` (realistic chat SFT: log-normal lengths, median 200
   tokens, long tail clipped at 2048, 16 conversations per batch) and ``chapter`` (the book chapter's short
   one-sentence rows, about 37 tokens, 64 per batch). Configurations: padded + sdpa; flattened + transformers'
   sdpa; flattened + this attention; flattened + flex_attention; BFD-packed rows (capacity 2048, 2 rows a step)
   + this attention; and the limit, dense equal-length batches with the same number of real tokens (nothing to
   pad, sdpa). Batches come from ``trl_formatkit.collators.DataCollatorForCompletionOnlyLM`` (padded, and
   ``padding_free=True``).
3. ``qlora``: the chapter's QLoRA set-up (bitsandbytes NF4, double quantization, bf16 compute, LoRA r=16,
   alpha 32, dropout 0.05, ``prepare_model_for_kbit_training``) padded + sdpa vs flattened + this attention.

Throughput counts real tokens only (no padding); medians over the timed steps after warm-up; peak memory is
``torch.cuda.max_memory_allocated`` over each configuration's steps (model, gradients and optimizer included).
It writes ``results.json``, ``results.md`` (the section for ``benchmarks/RESULTS.md``) and
``padded_vs_flat.png`` to ``--out``. ``--update-results benchmarks/RESULTS.md --from-json results.json``
rewrites this benchmark's section of RESULTS.md from a saved run (no GPU needed).
"""

from __future__ import annotations

import argparse
import bisect
import gc
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _results import section_end, tee, update_results  # noqa: E402

SECTION_START = "## padded_vs_flat (GPU)"
SECTION_END = section_end("padded_vs_flat")

# special token ids of the synthetic vocabulary (the other ids are ordinary tokens)
PAD, EOS, USER, ASSISTANT = 0, 1, 2, 3
VOCAB = 32064  # Phi-3's model vocabulary, the chapter's model


# ----------------------------------------------------------------------------------------------------------------
# data
# ----------------------------------------------------------------------------------------------------------------
def make_tokenizer():
    """A real (word-level) transformers tokenizer over the synthetic vocabulary, for the collator."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": PAD, "<eos>": EOS, "<|user|>": USER, "<|assistant|>": ASSISTANT}
    vocab.update({f"t{i}": i for i in range(4, VOCAB)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    tok.padding_side = "right"
    return tok


def sample_lengths(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "sft":  # chat SFT: median 200 tokens, mean ~270, long tail (p99 ~1300), at most 2048
        return np.clip(np.round(rng.lognormal(math.log(200), 0.8, n)), 24, 2048).astype(np.int64)
    if kind == "chapter":  # the chapter's one-sentence rows: 38 and 28 tokens in its printed batch
        return np.clip(np.round(rng.normal(37, 8, n)), 18, 80).astype(np.int64)
    raise ValueError(kind)


def make_conversation(length: int, rng: np.random.Generator) -> list[int]:
    """``<|user|> prompt <|assistant|> answer <eos>`` with about 40% prompt, ``length`` tokens in all."""
    body = length - 3
    prompt = max(1, int(round(body * rng.uniform(0.2, 0.6))))
    answer = max(1, body - prompt)
    words = rng.integers(4, VOCAB, size=prompt + answer).tolist()
    return [USER, *words[:prompt], ASSISTANT, *words[prompt:], EOS]


def bfd_pack(lengths: list[int], capacity: int) -> list[list[int]]:
    """Best-fit decreasing: indices of sequences per row, each row holding at most ``capacity`` tokens.

    >>> bfd_pack([5, 3, 4, 2, 6], 8)
    [[4, 3], [0, 1], [2]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, row index), sorted
    for i in order:
        n = lengths[i]
        if n > capacity:
            raise ValueError(f"sequence {i} has {n} tokens, more than the capacity {capacity}")
        at = bisect.bisect_left(free, (n, -1))
        if at < len(free):
            space, row = free.pop(at)
        else:
            rows.append([])
            space, row = capacity, len(rows) - 1
        rows[row].append(i)
        if space - n > 0:
            bisect.insort(free, (space - n, row))
    return rows


def build_batches(kind: str, n_batches: int, batch_size: int, seed: int, tokenizer) -> dict[str, Any]:
    """The same conversations as padded batches, flattened batches, BFD rows and equal-length dense batches."""
    import torch

    from trl_formatkit.collators import DataCollatorForCompletionOnlyLM

    rng = np.random.default_rng(seed)
    lengths = sample_lengths(kind, n_batches * batch_size, rng)
    convs = [make_conversation(int(n), rng) for n in lengths]
    groups = [convs[i * batch_size : (i + 1) * batch_size] for i in range(n_batches)]
    padded = DataCollatorForCompletionOnlyLM([ASSISTANT], tokenizer=tokenizer)
    flat = DataCollatorForCompletionOnlyLM([ASSISTANT], tokenizer=tokenizer, padding_free=True)
    out: dict[str, Any] = {"kind": kind, "batch_size": batch_size, "lengths": lengths.tolist()}
    out["padded"] = [padded(g) for g in groups]
    out["flat"] = [flat(g) for g in groups]
    out["groups"] = groups
    out["real_tokens"] = [sum(map(len, g)) for g in groups]

    # BFD: pack every conversation into rows of `capacity` tokens, `rows_per_step` rows a step, flattened
    capacity, rows_per_step = 2048, 2 if kind == "sft" else 1
    rows = bfd_pack([len(c) for c in convs], capacity)
    packed_rows = [
        {"input_ids": [t for i in r for t in convs[i]], "seq_lengths": [len(convs[i]) for i in r]} for r in rows
    ]
    starts = list(range(0, len(packed_rows), rows_per_step))[:n_batches]
    out["bfd"] = [flat(packed_rows[j : j + rows_per_step]) for j in starts]
    out["bfd_groups"] = [[convs[i] for r in rows[j : j + rows_per_step] for i in r] for j in starts]
    out["bfd_capacity"] = capacity
    out["bfd_rows_per_step"] = rows_per_step

    # the limit: dense equal-length batches with the same real tokens (nothing to pad). One length for every
    # step (the mean), so that no kernel pays for a new shape at each step.
    length = int(round(sum(out["real_tokens"]) / (batch_size * n_batches)))
    out["dense"] = []
    for _ in range(n_batches):
        ids = torch.from_numpy(rng.integers(4, VOCAB, size=(batch_size, length)))
        out["dense"].append({"input_ids": ids, "labels": ids.clone()})
    out["dense_length"] = length
    return out


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------
def to_device(batch: dict[str, Any], device) -> dict[str, Any]:
    import torch

    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def model_inputs(batch: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in batch.items() if k != "seq_idx"}


def real_tokens(batch: dict[str, Any]) -> int:
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


def rel_err(a, b) -> float:
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def free_cuda() -> None:
    import torch

    gc.collect()
    torch.cuda.empty_cache()


def versions() -> dict[str, str]:
    import torch
    import transformers

    info = {
        "gpu": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    for name in ("peft", "bitsandbytes"):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - optional
            info[name] = "not installed"
    return info


# ----------------------------------------------------------------------------------------------------------------
# 1. accuracy in bf16
# ----------------------------------------------------------------------------------------------------------------
def tiny_models():
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MistralConfig,
        MistralForCausalLM,
        Phi3Config,
        Phi3ForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    common = dict(
        vocab_size=1024, hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=2, max_position_embeddings=2048, pad_token_id=0, bos_token_id=1, eos_token_id=1,
    )
    return {
        "llama": (LlamaForCausalLM, LlamaConfig(**common)),
        "qwen2": (Qwen2ForCausalLM, Qwen2Config(**common)),
        "mistral": (MistralForCausalLM, MistralConfig(**common, sliding_window=None)),
        "mistral-swa64": (MistralForCausalLM, MistralConfig(**common, sliding_window=64)),
        "phi3": (Phi3ForCausalLM, Phi3Config(**common, sliding_window=None)),
    }


def accuracy_check(name: str, seed: int = 0) -> list[dict[str, Any]]:
    import torch

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    lengths = [int(x) for x in rng.integers(8, 300, size=12)]
    seqs = [torch.from_numpy(rng.integers(2, 1024, size=n)) for n in lengths]
    width = max(lengths)
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = s
        mask[i, : len(s)] = 1
        labels[i, 1 : len(s)] = s[1:]
    padded = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    flat_ids = torch.cat(seqs)[None]
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    flat_labels = flat_ids.clone()
    flat_labels[pos == 0] = -100
    cu = torch.tensor([0, *np.cumsum(lengths).tolist()], dtype=torch.int32)
    flat = {
        "input_ids": flat_ids, "labels": flat_labels, "position_ids": pos, "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu, "max_length_q": width, "max_length_k": width,
    }
    rows = []
    for family, (cls, config) in tiny_models().items():
        torch.manual_seed(seed)
        config.use_cache = False
        model32 = cls(config).cuda().float()
        state = {k: v.clone() for k, v in model32.state_dict().items()}

        def run(model, attn, batch):
            model.set_attn_implementation(attn)
            model.zero_grad(set_to_none=True)
            out = model(**to_device(batch, "cuda"))
            out.loss.backward()
            if "attention_mask" in batch:
                logits = torch.cat([out.logits[i, :n] for i, n in enumerate(lengths)])
            else:
                logits = out.logits[0]
            grads = torch.cat([p.grad.flatten().double() for p in model.parameters()])
            return logits.detach().double(), grads, float(out.loss)

        ref_logits, ref_grads, ref_loss = run(model32, "sdpa", padded)
        model16 = cls(config).cuda()
        model16.load_state_dict(state)
        model16 = model16.to(torch.bfloat16)
        pad_logits, pad_grads, pad_loss = run(model16, "sdpa", padded)
        flat_logits, flat_grads, flat_loss = run(model16, name, flat)
        f32_logits, f32_grads, f32_loss = run(model32, name, flat)  # float32 on GPU: exact fallback
        rows.append(
            {
                "family": family,
                "logits_flat_vs_padded_bf16": rel_err(flat_logits, pad_logits),
                "grads_flat_vs_padded_bf16": rel_err(flat_grads, pad_grads),
                "logits_padded_bf16_vs_fp32": rel_err(pad_logits, ref_logits),
                "logits_flat_bf16_vs_fp32": rel_err(flat_logits, ref_logits),
                "grads_padded_bf16_vs_fp32": rel_err(pad_grads, ref_grads),
                "grads_flat_bf16_vs_fp32": rel_err(flat_grads, ref_grads),
                "logits_flat_fp32_vs_padded_fp32_maxabs": float((f32_logits - ref_logits).abs().max()),
                "loss_padded_bf16": pad_loss,
                "loss_flat_bf16": flat_loss,
                "loss_fp32": ref_loss,
            }
        )
        del model32, model16
        free_cuda()
    return rows


def kernel_check(seed: int = 0) -> list[dict[str, Any]]:
    """The varlen kernel against the exact per-sequence fallback, on random bf16 inputs."""
    import torch

    from trl_formatkit.attention import kernels as K
    from trl_formatkit.attention.segments import Segments

    rows = []
    gen = torch.Generator(device="cuda").manual_seed(seed)
    for heads, kv_heads, dim, window, scaling in [
        (16, 16, 64, None, None),
        (16, 4, 64, None, None),
        (32, 8, 128, None, 0.1),
        (12, 4, 64, 50, None),
    ]:
        lengths = torch.randint(1, 400, (9,), generator=gen, device="cuda").tolist()
        total = sum(lengths)
        cu = torch.tensor([0, *np.cumsum(lengths).tolist()], dtype=torch.int32, device="cuda")
        seg = Segments(cu, cu, max(lengths), max(lengths), None, None)
        q = torch.randn(total, heads, dim, device="cuda", generator=gen, dtype=torch.bfloat16, requires_grad=True)
        k = torch.randn(total, kv_heads, dim, device="cuda", generator=gen, dtype=torch.bfloat16, requires_grad=True)
        v = torch.randn(total, kv_heads, dim, device="cuda", generator=gen, dtype=torch.bfloat16, requires_grad=True)
        grad = torch.randn(total, heads, dim, device="cuda", generator=gen, dtype=torch.bfloat16)
        out_k = K.run_kernel(K.kernel(), q, k, v, seg, K.Spec(scaling, True, window))
        gk = torch.autograd.grad(out_k, (q, k, v), grad)
        q64, k64, v64 = (t.detach().double().requires_grad_() for t in (q, k, v))
        out_r = K.run_per_sequence(q64, k64, v64, seg, K.Spec(scaling, True, window))
        gr = torch.autograd.grad(out_r, (q64, k64, v64), grad.double())
        assert torch.isfinite(out_k).all()
        rows.append(
            {
                "heads": f"{heads}/{kv_heads}",
                "head_dim": dim,
                "window": window,
                "scaling": scaling,
                "out_rel_err_vs_fp64": rel_err(out_k, out_r),
                "dq_rel_err": rel_err(gk[0], gr[0]),
                "dk_rel_err": rel_err(gk[1], gr[1]),
                "dv_rel_err": rel_err(gk[2], gr[2]),
            }
        )
    return rows


# ----------------------------------------------------------------------------------------------------------------
# 2. speed
# ----------------------------------------------------------------------------------------------------------------
def bench_config(quick: bool):
    from transformers import LlamaConfig

    if quick:
        return LlamaConfig(
            vocab_size=VOCAB, hidden_size=512, intermediate_size=1536, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=4, max_position_embeddings=4096, pad_token_id=PAD, bos_token_id=USER,
            eos_token_id=EOS, tie_word_embeddings=False,
        )
    return LlamaConfig(
        vocab_size=VOCAB, hidden_size=1024, intermediate_size=4608, num_hidden_layers=24, num_attention_heads=16,
        num_key_value_heads=8, max_position_embeddings=4096, pad_token_id=PAD, bos_token_id=USER, eos_token_id=EOS,
        tie_word_embeddings=False,
    )


def one_step(model, batch: dict[str, Any], optimizer) -> float:
    out = model(**model_inputs(to_device(batch, "cuda")))
    out.loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return out.loss


def train_steps(model, batches: list[dict[str, Any]], warmup: int, optimizer) -> dict[str, Any]:
    import torch

    times, tokens, losses = [], [], []
    for step, batch in enumerate(batches):
        n_real = real_tokens(batch)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        loss = one_step(model, batch, optimizer)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        losses.append(float(loss))
        if step >= warmup:
            times.append(dt)
            tokens.append(n_real)
    per_step = [n / t for n, t in zip(tokens, times, strict=True)]
    return {
        "tokens_per_s": statistics.median(per_step),
        "tokens_per_s_total": sum(tokens) / sum(times),
        "step_ms_median": 1000 * statistics.median(times),
        "timed_steps": len(times),
        "real_tokens_timed": sum(tokens),
        "losses": losses,
        "step_ms": [round(1000 * t, 2) for t in times],
    }


def sustained_tokens_per_s(model, batches: list[dict[str, Any]], optimizer) -> float:
    """Real tokens/s over the batches run back to back, one synchronisation at the end (as a training loop)."""
    import torch

    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for batch in batches:
        one_step(model, batch, optimizer)
    torch.cuda.synchronize()
    return sum(real_tokens(b) for b in batches) / (time.perf_counter() - t0)


def gpu_busy(model, batches: list[dict[str, Any]], optimizer) -> tuple[float, float]:
    """Device time of all kernels and copies per step (torch.profiler), and real tokens per device-second."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for batch in batches:
            one_step(model, batch, optimizer)
        torch.cuda.synchronize()
    total_us = 0.0
    for event in prof.key_averages():
        total_us += getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)
    return total_us / 1000 / len(batches), sum(real_tokens(b) for b in batches) / (total_us / 1e6)


def first_loss(model, batch) -> float:
    import torch

    with torch.no_grad():
        return float(model(**model_inputs(to_device(batch, "cuda"))).loss)


def make_optimizer(params):
    import torch

    # transformers' Trainer default (optim="adamw_torch_fused")
    return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0, fused=True)


PROFILED_STEPS = 6
SPEED_CONFIGS = (
    "padded + sdpa",
    "padded + sdpa, cuDNN attention off",
    "flattened + transformers sdpa",
    "flattened + formatkit varlen",
    "flattened + flex_attention",
    "BFD-packed rows + formatkit varlen",
    "limit: dense equal-length (sdpa)",
)


def run_speed(
    data: dict[str, Any], config, state, name: str, warmup: int, log, which: tuple[str, ...] = SPEED_CONFIGS
) -> list[dict[str, Any]]:
    import torch
    from transformers import LlamaForCausalLM

    padded_ref = data["padded"]
    attn_of = {
        "padded + sdpa": ("sdpa", "padded"),
        "padded + sdpa, cuDNN attention off": ("sdpa", "padded"),
        "flattened + transformers sdpa": ("sdpa", "flat"),
        "flattened + formatkit varlen": (name, "flat"),
        "flattened + flex_attention": ("flex_attention", "flat"),
        "BFD-packed rows + formatkit varlen": (name, "bfd"),
        "limit: dense equal-length (sdpa)": ("sdpa", "dense"),
    }
    tokenizer = make_tokenizer()
    rows = []
    from trl_formatkit.attention import forward as formatkit_attention

    for label in which:
        formatkit_attention._WARNED.clear()  # a fallback warning in any configuration shows in the log
        attn, key = attn_of[label]
        batches = data[key]
        free_cuda()
        with torch.device("cuda"):
            model = LlamaForCausalLM(config)
        model.load_state_dict(state)
        model.to(torch.bfloat16)
        model.set_attn_implementation(attn)
        # Training: no KV cache. With use_cache=True (the config default) transformers 5.x creates a cache even in
        # training and then skips packed-sequence detection, so sdpa and flex_attention attend across the
        # sequences of a flattened batch (loss off by ~2e-2 here); formatkit varlen is not affected.
        model.config.use_cache = False
        model.train()
        cudnn_sdp = torch.backends.cuda.cudnn_sdp_enabled()
        torch.backends.cuda.enable_cudnn_sdp("cuDNN attention off" not in label)
        optimizer = make_optimizer(model.parameters())
        try:
            # loss at the initial weights on the first batch, against padded + sdpa on the same conversations
            loss = first_loss(model, batches[0])
            if label.startswith("limit"):
                ref = None
            else:
                if label.startswith("BFD"):
                    from trl_formatkit.collators import DataCollatorForCompletionOnlyLM

                    ref_batch = DataCollatorForCompletionOnlyLM([ASSISTANT], tokenizer=tokenizer)(
                        data["bfd_groups"][0]
                    )
                else:
                    ref_batch = padded_ref[0]
                model.set_attn_implementation("sdpa")
                ref = first_loss(model, ref_batch)
                model.set_attn_implementation(attn)
            torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            result = train_steps(model, batches, warmup, optimizer)
            wall = time.perf_counter() - t0
            peak = torch.cuda.max_memory_allocated() / 1e9
            sustained = sustained_tokens_per_s(model, batches[warmup:], optimizer)
            busy, device_tps = gpu_busy(model, batches[warmup : warmup + PROFILED_STEPS], optimizer)
        except torch.cuda.OutOfMemoryError as exc:
            log(f"  {label:38s} out of memory: {str(exc).splitlines()[0]}")
            rows.append({"config": label, "attn": attn, "oom": True})
            del model, optimizer
            torch.backends.cuda.enable_cudnn_sdp(cudnn_sdp)
            free_cuda()
            continue
        result.update(
            config=label,
            attn=attn,
            peak_mem_gb=peak,
            gpu_busy_ms=busy,
            device_tokens_per_s=device_tps,
            sustained_tokens_per_s=sustained,
            first_loss=loss,
            ref_loss=ref,
            loss_abs_diff=None if ref is None else abs(loss - ref),
            wall_s=wall,
            n_batches=len(batches),
        )
        log(
            f"  {label:38s} {result['tokens_per_s']:>10,.0f} tok/s  {peak:6.2f} GB  "
            f"step {result['step_ms_median']:7.1f} ms (GPU busy {busy:6.1f})  sustained {sustained:>9,.0f}  "
            f"device {device_tps:>9,.0f} tok/s  loss {loss:.5f} (ref {ref})  "
            f"wall {wall:.1f}s"
        )
        rows.append(result)
        torch.backends.cuda.enable_cudnn_sdp(cudnn_sdp)
        del model, optimizer
        free_cuda()
    ok = [r for r in rows if not r.get("oom")]
    base = next((r for r in ok if r["config"] == "padded + sdpa"), None)
    limit = next((r for r in ok if r["config"].startswith("limit")), None)
    for r in ok:
        r["x_padded"] = r["tokens_per_s"] / base["tokens_per_s"] if base else None
        r["x_limit"] = r["tokens_per_s"] / limit["tokens_per_s"] if limit else None
        r["mem_x_padded"] = r["peak_mem_gb"] / base["peak_mem_gb"] if base else None
        r["mem_x_limit"] = r["peak_mem_gb"] / limit["peak_mem_gb"] if limit else None
        r["device_x_padded"] = r["device_tokens_per_s"] / base["device_tokens_per_s"] if base else None
    return rows


# ----------------------------------------------------------------------------------------------------------------
# 3. QLoRA
# ----------------------------------------------------------------------------------------------------------------
def run_qlora(data: dict[str, Any], config, state, name: str, warmup: int, log) -> list[dict[str, Any]] | str:
    try:
        import bitsandbytes  # noqa: F401
        import peft
    except Exception as exc:  # noqa: BLE001
        return f"skipped: {type(exc).__name__}: {exc}"
    import tempfile

    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import BitsAndBytesConfig, LlamaForCausalLM

    folder = tempfile.mkdtemp()
    model = LlamaForCausalLM(config)
    model.load_state_dict({k: v.cpu() for k, v in state.items()})
    model.to(torch.bfloat16).save_pretrained(folder)
    del model
    nf4 = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )
    rows = []
    from trl_formatkit.attention import forward as formatkit_attention

    formatkit_attention._WARNED.clear()
    for label, attn, batches in [
        ("QLoRA padded + sdpa", "sdpa", data["padded"]),
        ("QLoRA flattened + formatkit varlen", name, data["flat"]),
    ]:
        free_cuda()
        model = LlamaForCausalLM.from_pretrained(
            folder, device_map="cuda:0", dtype=torch.bfloat16, quantization_config=nf4, attn_implementation=attn
        )
        model.config.use_cache = False
        model = prepare_model_for_kbit_training(model)
        torch.manual_seed(0)
        lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
        model.train()
        optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad])
        model.eval()  # no LoRA dropout for the loss comparison
        loss = first_loss(model, batches[0])
        model.train()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        result = train_steps(model, batches, warmup, optimizer)
        wall = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() / 1e9
        result["sustained_tokens_per_s"] = sustained_tokens_per_s(model, batches[warmup:], optimizer)
        result["gpu_busy_ms"], result["device_tokens_per_s"] = gpu_busy(
            model, batches[warmup : warmup + PROFILED_STEPS], optimizer
        )
        result.update(config=label, attn=attn, peak_mem_gb=peak,
                      first_loss=loss, wall_s=wall, n_batches=len(batches),
                      trainable_params=sum(p.numel() for p in model.parameters() if p.requires_grad))
        log(
            f"  {label:38s} {result['tokens_per_s']:>10,.0f} tok/s  {result['peak_mem_gb']:6.2f} GB  "
            f"step {result['step_ms_median']:7.1f} ms  loss {loss:.5f}  wall {wall:.1f}s"
        )
        rows.append(result)
        del model, optimizer
        free_cuda()
    rows[1]["ref_loss"] = rows[0]["first_loss"]
    rows[1]["loss_abs_diff"] = abs(rows[1]["first_loss"] - rows[0]["first_loss"])
    rows[0]["ref_loss"], rows[0]["loss_abs_diff"] = rows[0]["first_loss"], 0.0
    for r in rows:
        r["x_padded"] = r["tokens_per_s"] / rows[0]["tokens_per_s"]
        r["mem_x_padded"] = r["peak_mem_gb"] / rows[0]["peak_mem_gb"]
    return rows


# ----------------------------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------------------------
SPEED_HEADER = [
    "| configuration | real tokens/s | x padded | x limit | sustained tokens/s | peak GB | peak x padded "
    "| peak x limit | step ms | GPU busy ms | tokens per GPU-second | x padded (GPU time) | loss (first batch) |",
    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
]


def speed_row(r: dict[str, Any]) -> str:
    if r.get("oom"):
        return f"| {r['config']} | out of memory |" + " |" * 11
    return (
        f"| {r['config']} | {r['tokens_per_s']:,.0f} | {r['x_padded']:.2f} | {r['x_limit']:.2f} | "
        f"{r['sustained_tokens_per_s']:,.0f} | {r['peak_mem_gb']:.2f} | {r['mem_x_padded']:.2f} | "
        f"{r['mem_x_limit']:.2f} | {r['step_ms_median']:.1f} | {r['gpu_busy_ms']:.1f} | "
        f"{r['device_tokens_per_s']:,.0f} | {r['device_x_padded']:.2f} | {fmt_loss(r)} |"
    )


def targets(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets for flattened + formatkit varlen on SFT lengths, by wall clock and by GPU time."""
    by = {r["config"]: r for r in rows if not r.get("oom")}
    v, p, lim = (by.get(k) for k in ("flattened + formatkit varlen", "padded + sdpa",
                                     "limit: dense equal-length (sdpa)"))
    if not (v and p and lim):
        return []

    def verdict(values: list[float], goal: float, above: bool) -> str:
        ok = [x >= goal if above else x <= goal for x in values]
        if all(ok):
            return "met"
        if not any(ok):
            return "not met"
        names = ["median step", "sustained", "GPU time"]
        met = [n for n, good in zip(names, ok, strict=True) if good]
        missed = [n for n, good in zip(names, ok, strict=True) if not good]
        return f"met by {' and '.join(met)}, not by {' and '.join(missed)}"

    speed = [v["tokens_per_s"] / p["tokens_per_s"], v["sustained_tokens_per_s"] / p["sustained_tokens_per_s"],
             v["device_tokens_per_s"] / p["device_tokens_per_s"]]
    limit = [v["tokens_per_s"] / lim["tokens_per_s"], v["sustained_tokens_per_s"] / lim["sustained_tokens_per_s"],
             v["device_tokens_per_s"] / lim["device_tokens_per_s"]]
    mem = v["peak_mem_gb"] / p["peak_mem_gb"]
    return [
        "Targets for flattened + formatkit varlen (median step / sustained / GPU time):",
        "",
        f"- at least 3x the real-token throughput of padded + sdpa: {speed[0]:.2f}x / {speed[1]:.2f}x / "
        f"{speed[2]:.2f}x, {verdict(speed, 3.0, True)};",
        f"- at least 0.9 of the equal-length limit: {limit[0]:.2f} / {limit[1]:.2f} / {limit[2]:.2f}, "
        f"{verdict(limit, 0.9, True)};",
        f"- at most 0.6 of padded + sdpa's peak memory: {mem:.2f} ({v['peak_mem_gb']:.1f} GB against "
        f"{p['peak_mem_gb']:.1f} GB), {verdict([mem], 0.6, False)}.",
        "",
    ]


def fmt_loss(r: dict[str, Any]) -> str:
    if r.get("ref_loss") is None:
        return "n/a (other data)"
    return f"{r['first_loss']:.4f} vs {r['ref_loss']:.4f} (Δ {r['loss_abs_diff']:.1e})"


def render_markdown(res: dict[str, Any]) -> str:
    v = res["versions"]
    lines = [
        SECTION_START,
        "",
        f"`python benchmarks/padded_vs_flat.py` on {v['gpu']}; torch {v['torch']} (CUDA {v['cuda']}), "
        f"transformers {v['transformers']}, peft {v['peft']}, bitsandbytes {v['bitsandbytes']}, "
        f"Python {v['python']}; {res['date']}.",
        "",
        f"Model: Llama-style, random weights, {res['model']['params'] / 1e9:.2f}B parameters (hidden "
        f"{res['model']['hidden_size']}, {res['model']['layers']} layers, {res['model']['heads']} heads, "
        f"{res['model']['kv_heads']} key/value heads, vocabulary {res['model']['vocab']}), bf16 weights, fused "
        f"AdamW (the Trainer's default), "
        f"forward + backward + optimizer step. Batches from `DataCollatorForCompletionOnlyLM` (padded, "
        f"right padding; `padding_free=True`), the same conversations in every configuration. Median real "
        f"tokens/s over {res['timed_steps']} timed steps after {res['warmup']} warm-up steps; `use_cache=False` "
        f"(training); the second row turns PyTorch's cuDNN attention backend off for comparison. Sustained: the "
        f"same timed steps again back to back with one synchronisation at the end, as a training loop runs. "
        f"Peak = `torch.cuda.max_memory_allocated` (weights, gradients and optimizer state included). GPU busy: "
        f"device time of all kernels per step (torch.profiler over {PROFILED_STEPS} steps); tokens per GPU-second "
        f"divides the real tokens by that time, which leaves out what the host adds. Loss: at the initial "
        f"weights on the first batch, against padded + sdpa on the same conversations.",
        "",
    ]
    for data in res["speed"]:
        d = data["data"]
        lines += [
            f"### {d['title']}",
            "",
            d["description"],
            "",
            *SPEED_HEADER,
        ]
        for r in data["rows"]:
            lines.append(speed_row(r))
        lines.append("")
        if d["kind"] == "sft":
            lines += targets(data["rows"])
    if res.get("scaling"):
        first = res["speed"][0]["rows"]
        lines += [
            "### More conversations per step (SFT lengths)",
            "",
            "Every step of a 0.5B model pays a cost that does not grow with its tokens (kernel launches and Python "
            "of 24 layers forward and backward, the optimizer over all weights): the GPU-busy column shows the "
            "GPU idle for a good part of a 16-conversation step even in the limit. More conversations per step "
            "spread that cost; padded batches cannot follow, their memory grows with the longest conversation.",
            "",
            "| conversations a step | real tokens a step | configuration | real tokens/s | x padded (16) | "
            "x limit | sustained tokens/s | peak GB | step ms | GPU busy ms | tokens per GPU-second |",
            "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        base16 = first[0]["tokens_per_s"]
        for sweep in res["scaling"]:
            limit = next((r for r in sweep["rows"] if r["config"].startswith("limit") and not r.get("oom")), None)
            for r in sweep["rows"]:
                if r.get("oom"):
                    lines.append(f"| {sweep['batch_size']} | {sweep['mean_tokens_per_step']:,.0f} | {r['config']} "
                                 f"| out of memory | | | | > 80 | | | |")
                    continue
                x_limit = f"{r['tokens_per_s'] / limit['tokens_per_s']:.2f}" if limit else ""
                lines.append(
                    f"| {sweep['batch_size']} | {sweep['mean_tokens_per_step']:,.0f} | {r['config']} | "
                    f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / base16:.2f} | {x_limit} | "
                    f"{r['sustained_tokens_per_s']:,.0f} | {r['peak_mem_gb']:.2f} | {r['step_ms_median']:.1f} | "
                    f"{r['gpu_busy_ms']:.1f} | {r['device_tokens_per_s']:,.0f} |"
                )
        lines.append("")
    q = res.get("qlora")
    lines += ["### QLoRA (the chapter's configuration), SFT lengths", ""]
    if isinstance(q, list):
        lines += [
            "bitsandbytes NF4 with double quantization, bf16 compute, `prepare_model_for_kbit_training` "
            "(gradient checkpointing, float32 norms), LoRA r=16, alpha 32, dropout 0.05 on the attention "
            f"projections ({q[0]['trainable_params'] / 1e6:.1f}M trainable parameters); same batches as above.",
            "",
            "| configuration | real tokens/s | x padded | sustained tokens/s | peak GB | peak x padded | step ms "
            "| GPU busy ms | tokens per GPU-second | loss (first batch) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
        ]
        for r in q:
            lines.append(
                f"| {r['config']} | {r['tokens_per_s']:,.0f} | {r['x_padded']:.2f} | "
                f"{r['sustained_tokens_per_s']:,.0f} | {r['peak_mem_gb']:.2f} | {r['mem_x_padded']:.2f} | "
                f"{r['step_ms_median']:.1f} | {r['gpu_busy_ms']:.1f} | {r['device_tokens_per_s']:,.0f} | "
                f"{fmt_loss(r)} |"
            )
    else:
        lines.append(f"Not run: {q}")
    lines.append("")
    lines += [
        "### Accuracy of `trl_formatkit.attention` in bf16",
        "",
        "Tiny random models (hidden 256, 4 layers, 8 heads, 2 key/value heads), 12 sequences of 8-300 tokens. "
        "Relative error ‖a − b‖ / ‖b‖ of logits (real tokens) and of all parameter gradients: flattened + "
        "this attention vs padded + sdpa, both in bf16; and each against padded + sdpa in float32. "
        "`mistral-swa64` has a 64-token sliding window. The last column is the float32 flattened run (exact "
        "fallback) against float32 padded sdpa (max abs).",
        "",
        "| family | logits flat vs padded | grads flat vs padded | logits padded bf16 vs fp32 | "
        "logits flat bf16 vs fp32 | grads padded bf16 vs fp32 | grads flat bf16 vs fp32 | fp32 max abs |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in res["accuracy"]:
        lines.append(
            f"| {r['family']} | {r['logits_flat_vs_padded_bf16']:.1e} | {r['grads_flat_vs_padded_bf16']:.1e} | "
            f"{r['logits_padded_bf16_vs_fp32']:.1e} | {r['logits_flat_bf16_vs_fp32']:.1e} | "
            f"{r['grads_padded_bf16_vs_fp32']:.1e} | {r['grads_flat_bf16_vs_fp32']:.1e} | "
            f"{r['logits_flat_fp32_vs_padded_fp32_maxabs']:.1e} |"
        )
    lines += [
        "",
        "Kernel alone (`varlen_attn`, bf16) against the float64 per-sequence reference, 9 random sequences:",
        "",
        "| heads (q/kv) | head dim | window | scaling | out | dq | dk | dv |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in res["kernel"]:
        lines.append(
            f"| {r['heads']} | {r['head_dim']} | {r['window'] or '-'} | {r['scaling'] or 'default'} | "
            f"{r['out_rel_err_vs_fp64']:.1e} | {r['dq_rel_err']:.1e} | {r['dk_rel_err']:.1e} | "
            f"{r['dv_rel_err']:.1e} |"
        )
    if res.get("notes"):
        lines += ["", "### Reading these numbers", ""]
        lines += [f"- {note}" for note in res["notes"]]
    lines += ["", "![tokens/s and peak memory per configuration](plots/padded_vs_flat.png)", "",
              "Raw numbers: `benchmarks/plots/padded_vs_flat.json` (re-render this section with "
              "`python benchmarks/padded_vs_flat.py --from-json benchmarks/plots/padded_vs_flat.json "
              "--update-results benchmarks/RESULTS.md`).", "", SECTION_END]
    return "\n".join(lines) + "\n"


def render_plot(res: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [(d["data"]["title"], d["rows"]) for d in res["speed"]]
    if isinstance(res.get("qlora"), list):
        panels.append(("QLoRA, SFT lengths", res["qlora"]))
    fig, axes = plt.subplots(3, len(panels), figsize=(6.5 * len(panels), 12), squeeze=False)
    for col, (title, rows) in enumerate(panels):
        rows = [r for r in rows if not r.get("oom")]
        labels = [r["config"].replace(" + ", "\n+ ").replace("QLoRA ", "QLoRA\n") for r in rows]
        colors = ["#888888" if "padded + sdpa" in r["config"] else "#2a6fdb" if "formatkit" in r["config"]
                  else "#44aa77" if r["config"].startswith("limit") else "#d08c30" for r in rows]
        y = np.arange(len(rows))
        ax = axes[0][col]
        ax.barh(y, [r["tokens_per_s"] / 1e3 for r in rows], color=colors)
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("real tokens/s (thousands), higher is better")
        ax.set_title(title, fontsize=10)
        for i, r in enumerate(rows):
            ax.text(r["tokens_per_s"] / 1e3, i, f" {r['x_padded']:.1f}x", va="center", fontsize=8)
        ax = axes[1][col]
        ax.barh(y, [r["peak_mem_gb"] for r in rows], color=colors)
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("peak GPU memory (GB), lower is better")
        for i, r in enumerate(rows):
            ax.text(r["peak_mem_gb"], i, f" {r['peak_mem_gb']:.1f}", va="center", fontsize=8)
        ax = axes[2][col]
        device = [r.get("device_tokens_per_s", 0.0) / 1e3 for r in rows]
        ax.barh(y, device, color=colors)
        ax.set_yticks(y, labels, fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("real tokens per GPU-busy second (thousands): device work only")
        for i, d in enumerate(device):
            ax.text(d, i, f" {d:.0f}k", va="center", fontsize=8)
    v = res["versions"]
    fig.suptitle(f"padded vs flattened batches, {res['model']['params'] / 1e9:.2f}B Llama, bf16 + AdamW; "
                 f"{v['gpu']}, torch {v['torch']}, transformers {v['transformers']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    parser.add_argument("--quick", action="store_true", help="small model and few steps (smoke test)")
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per configuration")
    parser.add_argument("--skip-qlora", action="store_true")
    parser.add_argument("--only", choices=["check", "speed"], default=None)
    parser.add_argument("--update-results", type=Path, default=None, help="RESULTS.md to rewrite")
    parser.add_argument("--from-json", type=Path, default=None, help="a saved results.json (no GPU needed)")
    args = parser.parse_args(argv)

    if args.from_json is not None:
        res = json.loads(args.from_json.read_text())
        section = render_markdown(res)
        if args.update_results:
            update_results(args.update_results, "padded_vs_flat", section)
            plot = args.update_results.parent / "plots" / "padded_vs_flat.png"
            plot.parent.mkdir(parents=True, exist_ok=True)
            print("plot:", render_plot(res, plot))
        print(section)
        return

    import torch

    if not torch.cuda.is_available():
        raise SystemExit("padded_vs_flat.py needs a CUDA GPU; CPU correctness is covered by tests/test_attention.py")
    from trl_formatkit.attention import register, varlen_kernel_available

    args.out.mkdir(parents=True, exist_ok=True)
    log = tee(args.out / "log.txt")

    name = register()
    warmup = args.warmup if args.warmup is not None else (2 if args.quick else 4)
    steps = args.steps if args.steps is not None else (4 if args.quick else 20)
    res: dict[str, Any] = {"versions": versions(), "date": time.strftime("%Y-%m-%d"), "warmup": warmup,
                           "timed_steps": steps}
    log(json.dumps(res["versions"]))
    log(f"varlen kernel available: {varlen_kernel_available()}")
    torch.backends.cuda.matmul.allow_tf32 = False

    if args.only in (None, "check"):
        t0 = time.perf_counter()
        res["kernel"] = kernel_check()
        for r in res["kernel"]:
            log("kernel " + json.dumps(r))
        res["accuracy"] = accuracy_check(name)
        for r in res["accuracy"]:
            log("accuracy " + json.dumps(r))
        log(f"checks: {time.perf_counter() - t0:.1f}s")
        if args.only == "check":
            (args.out / "results.json").write_text(json.dumps(res, indent=1))
            return

    config = bench_config(args.quick)
    torch.manual_seed(0)
    with torch.device("cuda"):
        from transformers import LlamaForCausalLM

        model = LlamaForCausalLM(config).to(torch.bfloat16)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    params = sum(p.numel() for p in model.parameters())
    del model
    res["model"] = {"params": params, "hidden_size": config.hidden_size, "layers": config.num_hidden_layers,
                    "heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads, "vocab": VOCAB}
    log(f"model: {params / 1e9:.3f}B parameters")
    tokenizer = make_tokenizer()
    n_batches = warmup + steps
    datasets = [
        ("sft", 16, "SFT lengths (16 conversations a step)",
         "Log-normal lengths, median 200 tokens, σ 0.8, clipped to 24-2048 (mean ≈ 270, long tail), 16 "
         "conversations per step (`<|user|>` prompt `<|assistant|>` answer `<eos>`, 20-60% prompt); BFD rows hold "
         "up to 2048 tokens, 2 rows a step."),
        ("chapter", 64, "The chapter's short rows (64 a step)",
         "One-sentence rows like the chapter's Yoda data set: about N(37, 8) tokens, 18-80, 64 rows per step; "
         "BFD rows hold up to 2048 tokens, 1 row a step."),
    ]
    res["speed"] = []
    sft_data = None
    for kind, batch_size, title, description in datasets:
        data = build_batches(kind, n_batches, batch_size, seed=1 if kind == "sft" else 2, tokenizer=tokenizer)
        lengths = np.array(data["lengths"])
        padded_tokens = sum(int(b["input_ids"].numel()) for b in data["padded"])
        stats = {"mean_len": float(lengths.mean()), "median_len": float(np.median(lengths)),
                 "p99_len": float(np.percentile(lengths, 99)), "max_len": int(lengths.max()),
                 "padding_fraction": 1 - sum(data["real_tokens"]) / padded_tokens,
                 "bfd_fill": sum(data["real_tokens"]) / (len(data["bfd"]) * data["bfd_rows_per_step"] * 2048)}
        description += (
            f" Measured: mean {stats['mean_len']:.0f}, median {stats['median_len']:.0f}, p99 "
            f"{stats['p99_len']:.0f}, max {stats['max_len']}; padding is {100 * stats['padding_fraction']:.0f}% "
            f"of the padded batches' tokens."
        )
        description += (
            f" The limit: {batch_size} rows of {data['dense_length']} random tokens every step (the same real "
            f"tokens per step on average)."
        )
        log(f"{kind}: {json.dumps(stats)}")
        rows = run_speed(data, config, state, name, warmup, log)
        res["speed"].append({"data": {"kind": kind, "title": title, "description": description, **stats},
                             "rows": rows})
        (args.out / "results.json").write_text(json.dumps(res, indent=1))  # partial results survive a timeout
        if kind == "sft":
            sft_data = data
    # more conversations per step: the per-step cost that does not grow with tokens is spread thinner
    res["scaling"] = []
    for batch_size in () if args.quick else (32, 64):
        data = build_batches("sft", n_batches, batch_size, seed=10 + batch_size, tokenizer=tokenizer)
        which = ("padded + sdpa", "flattened + formatkit varlen", "limit: dense equal-length (sdpa)")
        if batch_size > 32:  # needs about 4x the memory of 16 conversations padded: more than any single GPU has
            which = which[1:]
        log(f"sft, {batch_size} conversations a step:")
        rows = run_speed(data, config, state, name, warmup, log, which=which)
        res["scaling"].append({"batch_size": batch_size, "rows": rows,
                               "mean_tokens_per_step": sum(data["real_tokens"]) / n_batches})
        (args.out / "results.json").write_text(json.dumps(res, indent=1))
    if args.skip_qlora:
        res["qlora"] = "skipped (--skip-qlora)"
    else:
        try:
            res["qlora"] = run_qlora(sft_data, config, state, name, warmup, log)
        except Exception as exc:  # noqa: BLE001 - report, keep the rest
            import traceback

            log(traceback.format_exc())
            res["qlora"] = f"failed: {type(exc).__name__}: {exc}"

    (args.out / "results.json").write_text(json.dumps(res, indent=1))
    section = render_markdown(res)
    (args.out / "results.md").write_text(section)
    log(f"plot: {render_plot(res, args.out / 'padded_vs_flat.png')}")
    print(section)


if __name__ == "__main__":
    main()
