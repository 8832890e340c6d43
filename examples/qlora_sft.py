"""QLoRA fine-tuning through ``trl_formatkit.SFTTrainer``: the chapter's set-up, packed, completion-only labels.

The chapter's QLoRA recipe (bitsandbytes NF4 with double quantisation and a bf16 compute dtype,
``prepare_model_for_kbit_training``, ``LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none")``) on a
small random-weight Llama (no hub here: the model is built from a config, saved, and loaded back in 4 bits),
trained on generated multi-turn ``messages`` with ``packing=True`` (trl's ``bfd``, padding-free batches). The
labels come from each conversation's structure while the dataset is prepared; the script checks that the first
batch trains only the answers and their ``<|end|>``, then prints the loss curve, peak GPU memory and tokens/s.

Usage (GPU, needs ``pip install 'trl-formatkit[qlora]'``)::

    python examples/qlora_sft.py --steps 60 --json qlora.json

On a CPU (no bitsandbytes kernels): ``python examples/qlora_sft.py --no-4bit --hidden 64 --layers 2 --steps 5``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

WORDS = (
    "red blue green sky tree cat dog runs jumps fast slow big small sun moon water stone river light dark warm "
    "cold bird flies sings quiet loud"
).split()
BUNDLED_TOKENIZER = Path(__file__).resolve().parent.parent / "trl_formatkit" / "data" / "phi-3-mini"


def chats(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    """Multi-turn conversations of random words (1-4 exchanges, a system turn in a third of them)."""
    rng = random.Random(seed)

    def sentence(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k)) + rng.choice(".!?")

    out = []
    for i in range(n):
        messages = [{"role": "system", "content": "Answer briefly."}] if i % 3 == 0 else []
        for _ in range(rng.randint(1, 4)):
            messages.append({"role": "user", "content": sentence(rng.randint(4, 20))})
            messages.append({"role": "assistant", "content": sentence(rng.randint(3, 30))})
        out.append(messages)
    return out


def build_model(tokenizer, args):
    """A random-weight Llama sized by ``args``, saved and loaded back (in NF4 when ``args.four_bit``)."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(args.seed)
    config = LlamaConfig(
        vocab_size=32064, hidden_size=args.hidden, intermediate_size=args.hidden * 3, num_hidden_layers=args.layers,
        num_attention_heads=max(args.hidden // 64, 2), num_key_value_heads=max(args.hidden // 128, 1),
        max_position_embeddings=4096, pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    if not args.four_bit:
        return LlamaForCausalLM(config)
    from peft import prepare_model_for_kbit_training

    compute_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float32
    nf4_config = BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )
    with tempfile.TemporaryDirectory() as folder:
        LlamaForCausalLM(config).to(compute_dtype).save_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(
            folder, device_map="cuda:0", dtype=compute_dtype, quantization_config=nf4_config
        )
    return prepare_model_for_kbit_training(model)


def first_batch_report(trainer, tokenizer) -> dict:
    """Trained tokens of the first batch: every trained run must end with the answer's <|end|>."""
    import numpy as np

    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["labels"][0].cpu().numpy()
    trained = labels != -100
    edges = np.flatnonzero(np.diff(np.concatenate([[0], trained.astype(np.int8), [0]])))
    runs = [labels[a:b].tolist() for a, b in zip(edges[::2], edges[1::2], strict=True)]
    end = tokenizer.convert_tokens_to_ids("<|end|>")
    user = tokenizer.convert_tokens_to_ids("<|user|>")
    return {
        "sequences": int((batch["position_ids"][0] == 0).sum()) if "position_ids" in batch else len(labels),
        "tokens": int(labels.size),
        "trained_tokens": int(trained.sum()),
        "trained_runs": len(runs),
        "every_run_ends_with_end": all(r[-1] == end for r in runs),
        "no_marker_trained": not any(user in r for r in runs),
        "example": tokenizer.decode(runs[0]) if runs else "",
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default=str(BUNDLED_TOKENIZER))
    parser.add_argument("--no-4bit", dest="four_bit", action="store_false", help="plain weights (CPU runs)")
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output-dir", default=None)
    parser.add_argument("--json", default=None, help="write the results here")
    args = parser.parse_args(argv)

    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer
    from trl import SFTConfig

    from trl_formatkit import SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    model = build_model(tokenizer, args)
    cuda = torch.cuda.is_available() and args.four_bit
    config = SFTConfig(
        output_dir=args.output_dir or tempfile.mkdtemp(prefix="qlora-"),
        max_steps=args.steps, per_device_train_batch_size=args.batch_size, learning_rate=args.lr,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, save_strategy="no", report_to="none",
        packing=True, max_length=args.max_length, bf16=cuda, use_cpu=not cuda, gradient_checkpointing=cuda,
        disable_tqdm=True, seed=args.seed,
    )
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.05, bias="none", task_type="CAUSAL_LM")
    dataset = Dataset.from_list([{"messages": c} for c in chats(args.rows, args.seed)])
    started = time.perf_counter()
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora)
    prepared_s = time.perf_counter() - started
    report = {"first_batch": first_batch_report(trainer, tokenizer), "prepare_s": round(prepared_s, 2)}
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - started
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    report.update(_run_facts(trainer, model, args, cuda, losses, train_s))
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


def _run_facts(trainer, model, args, cuda: bool, losses: list[float], train_s: float) -> dict:
    import importlib.metadata as md

    import torch

    tokens = sum(h.get("num_tokens", 0) for h in trainer.state.log_history[-2:-1]) or None
    versions = {}
    for name in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return {
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "four_bit": args.four_bit,
        "model": {
            "hidden": args.hidden, "layers": args.layers, "parameters": sum(p.numel() for p in model.parameters())
        },
        "trainable_parameters": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
        "steps": len(losses),
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)] if losses else None,
        "losses": [round(x, 4) for x in losses],
        "train_s": round(train_s, 2),
        "tokens_seen": tokens,
        "tokens_per_s": round(tokens / train_s) if tokens else None,
        "peak_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
        "versions": versions,
        "python": sys.version.split()[0],
    }


if __name__ == "__main__":
    main()
