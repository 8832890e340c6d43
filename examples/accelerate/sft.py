"""Completion-only, padding-free, packed SFT with ``trl_formatkit.SFTTrainer`` on one or several processes.

The same script for a laptop CPU, CI (2 CPU processes, gloo) and GPUs (DDP, FSDP2), launched by the usual tools;
trl_formatkit adds no launcher of its own::

    python examples/accelerate/sft.py --model tiny                                   # one process
    torchrun --nproc_per_node 2 examples/accelerate/sft.py --model tiny              # 2 CPU processes (gloo)
    accelerate launch --config_file examples/accelerate/ddp.yaml examples/accelerate/sft.py --model 0.5b --bf16
    accelerate launch --config_file examples/accelerate/fsdp2.yaml examples/accelerate/sft.py --model 0.5b --bf16

(``examples/accelerate/launch.sh`` runs the GPU set: 1 GPU, 2-GPU DDP, 2-GPU FSDP2.)

The data: synthetic chats with the phi-3-mini tokenizer (``$FORMATKIT_TOKENIZERS/phi-3-mini``); with ``--data
dolly`` the rows are in the databricks-dolly format, which only a plugin (``formatkit_dolly``, entry point
``trl_formatkit.plugins``) knows, so every process must load it. The model is a random-weight Llama built from a
config (``tiny``: 2 layers of 64; ``0.5b``: 24 layers of 1024). Labels come from the conversation's structure
(completion-only), batches are padding-free, rows packed (``bfd``), attention is trl_formatkit's varlen kernel
where it runs (GPU), else transformers' sdpa with its packed-sequence mask.

``--report DIR`` writes ``rank<N>.json`` per process: the first batches the model was fed, the log records and
warnings trl_formatkit said in that process, when the whole-dataset check ran, the losses and tokens/s; rank 0 also
writes the prepared (packed) training rows. ``tests/test_distributed.py`` reads them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
import warnings
from pathlib import Path

WORDS = ("the a of to and in is it you that was for on are with as I they be at one have this from or by hot word "
         "but what some we can out other were all there when up use your how said an each she which do their time "
         "if will way about many then them write would like so these her long make thing see him two has look more "
         "day could go come did number sound no most people my over know water than call first who may down side "
         "Yoda Force Jedi planks canoe birch").split()
CONFIGS = {
    "tiny": {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2},
    "0.5b": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24, "num_attention_heads": 16,
             "num_key_value_heads": 8},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--tokenizer", default=os.path.join(os.environ.get("FORMATKIT_TOKENIZERS", "."), "phi-3-mini"))
    parser.add_argument("--data", choices=["messages", "dolly"], default="messages")
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--words", type=int, default=60, help="mean words per message")
    parser.add_argument("--long-prompts", type=int, default=0, help="rows whose prompt alone exceeds max_length")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=2, help="packed rows per device and step")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--no-packing", action="store_true")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--warmup-steps", type=int, default=2, help="steps left out of the tokens/s")
    parser.add_argument("--report", type=Path)
    parser.add_argument("--record-batches", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def sentence(rng: random.Random, mean: int) -> str:
    n = max(1, int(rng.expovariate(1 / mean)))
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def make_rows(args: argparse.Namespace) -> list[dict]:
    """Deterministic rows (every process builds the same); answers carry their row number."""
    rng = random.Random(args.seed)
    rows = []
    for i in range(args.rows):
        long = i < args.long_prompts
        prompt = " ".join(["word"] * (args.max_length + 20)) if long else sentence(rng, args.words)
        answer = f"Answer {i}: {sentence(rng, args.words)}"
        if args.data == "dolly":
            rows.append({"instruction": prompt, "context": "", "response": answer})
        else:
            turns = [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
            for _ in range(rng.randint(0, 2)):
                turns += [{"role": "user", "content": sentence(rng, args.words)},
                          {"role": "assistant", "content": f"More {i}: {sentence(rng, args.words)}"}]
            rows.append({"messages": turns})
    return rows


def build_model(args: argparse.Namespace, tokenizer):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    config = LlamaConfig(vocab_size=32064, max_position_embeddings=max(4096, args.max_length),
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         tie_word_embeddings=False, **CONFIGS[args.model])
    model = LlamaForCausalLM(config)
    attention = "sdpa"
    if torch.cuda.is_available():
        from trl_formatkit.attention import register, varlen_kernel_available

        if varlen_kernel_available("cuda"):
            attention = register()
    model.set_attn_implementation(attention)
    return model, attention


class Recorder:
    """What this process fed the model, said, and when its whole-dataset check ran."""

    def __init__(self, n_batches: int):
        self.n_batches, self.batches, self.logs, self.checks = n_batches, [], [], []
        self.step_times: list[float] = []
        self.tokens: list[int] = []

    def hook(self, module, args, kwargs):
        ids = kwargs["input_ids"]
        self.tokens.append(int(ids.numel()) if "position_ids" in kwargs else int(kwargs["attention_mask"].sum()))
        if len(self.batches) < self.n_batches:
            self.batches.append({key: kwargs[key].tolist() for key in ("input_ids", "labels", "position_ids")
                                 if kwargs.get(key) is not None})

    def watch_logs(self) -> None:
        recorder = self

        class Keep(logging.Handler):
            def emit(self, record):
                recorder.logs.append(f"{record.name}: {record.getMessage()}")

        for name in ("trl_formatkit", "datasets"):
            logging.getLogger(name).addHandler(Keep())
        logging.getLogger("datasets").setLevel(logging.INFO)  # "Loading cached processed dataset" lines

    def watch_check(self) -> None:
        import trl_formatkit.sft as sft

        original = sft.check_trained

        def timed(*args, **kwargs):
            start = time.time()
            try:
                return original(*args, **kwargs)
            finally:
                self.checks.append([start, time.time()])

        sft.check_trained = timed


def train(args: argparse.Namespace) -> dict:
    import torch
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig

    from trl_formatkit import SFTTrainer
    from trl_formatkit.distributed import num_processes, process_index

    recorder = Recorder(args.record_batches)
    recorder.watch_logs()
    recorder.watch_check()
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    model, attention = build_model(args, tokenizer)
    model.register_forward_pre_hook(recorder.hook, with_kwargs=True)
    rows = load_rows(args)
    config = SFTConfig(
        output_dir=str(args.report or Path("sft-out")), report_to="none", save_strategy="no", max_steps=args.steps,
        per_device_train_batch_size=args.batch, gradient_accumulation_steps=args.grad_accum, learning_rate=args.lr,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, disable_tqdm=True, bf16=args.bf16,
        use_cpu=not torch.cuda.is_available(), max_length=args.max_length, packing=not args.no_packing,
        padding_free=True, gradient_checkpointing=False, seed=args.seed, dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
    )

    class Clock(TrainerCallback):
        def on_step_end(self, *_, **__):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            recorder.step_times.append(time.perf_counter())

    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        trainer = SFTTrainer(model=model, args=config, train_dataset=rows, processing_class=tokenizer,
                             callbacks=[Clock()])
        start = time.perf_counter()
        trainer.train()
    return _report(args, trainer, recorder, said, start, attention, process_index(), num_processes())


def load_rows(args: argparse.Namespace):
    """The rows as a ``datasets.Dataset``. With ``--report``, backed by files (a JSON Lines file the main process
    writes, loaded through ``datasets``' cache), as real data is: then the other processes reuse the main one's
    cache files for every preparation step, which tests can see in the ``datasets`` log."""
    from datasets import Dataset, load_dataset

    from trl_formatkit.distributed import is_main_process, main_process_first

    if args.report is None:
        return Dataset.from_list(make_rows(args))
    path = args.report / "rows.jsonl"
    with main_process_first():
        if is_main_process():
            path.write_text("".join(json.dumps(row) + "\n" for row in make_rows(args)))
        return load_dataset("json", data_files=str(path), split="train", cache_dir=str(args.report / "cache"))


def _report(args, trainer, recorder, said, start, attention, rank, world) -> dict:
    import torch

    times = recorder.step_times
    steady = times[args.warmup_steps:]
    steps = len(steady) - 1
    tokens = sum(recorder.tokens) / max(1, len(recorder.tokens)) * args.grad_accum  # real tokens, one process
    report = {
        "rank": rank,
        "world_size": world,
        "attention": attention,
        "losses": [log["loss"] for log in trainer.state.log_history if "loss" in log],
        "batches": recorder.batches,
        "logs": recorder.logs,
        "warnings": [f"{w.category.__name__}: {w.message}" for w in said],
        "checks": recorder.checks,
        "tokens_per_step_per_process": tokens,
        "seconds_per_step": (steady[-1] - steady[0]) / steps if steps > 0 else None,
        "train_seconds": time.perf_counter() - start,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None,
    }
    if report["seconds_per_step"]:
        report["tokens_per_second"] = tokens * world / report["seconds_per_step"]
    if args.report is not None:
        if rank == 0:
            prepared = trainer.train_dataset
            keep = [c for c in ("input_ids", "labels", "seq_lengths") if c in prepared.column_names]
            report["prepared"] = prepared.select_columns(keep).to_dict()
        (args.report / f"rank{rank}.json").write_text(json.dumps(report))
    return report


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.report is not None:
        args.report.mkdir(parents=True, exist_ok=True)
    report = train(args)
    if report["rank"] == 0:
        rate = report.get("tokens_per_second")
        print(json.dumps({"world_size": report["world_size"], "attention": report["attention"],
                          "losses": report["losses"], "tokens_per_second": rate,
                          "seconds_per_step": report["seconds_per_step"], "peak_gib": report["peak_gib"],
                          "tokens_per_step": report["tokens_per_step_per_process"] * report["world_size"]}))


if __name__ == "__main__":
    main()
