"""torch.compile with the padding-free attention (issue 12 item 2): no graph break in this package's code, a
bounded number of recompilations as the tokens per step change, and trl's ``SFTConfig(torch_compile=True)``.

The CPU runs the exact masked fallback, which traces like the kernel path (the kernel path itself is traced on the
GPU by ``benchmarks/padded_vs_flat.py``). The ``eager`` backend keeps these tests fast: graph breaks and guards are
decided by dynamo, whatever the backend.
"""

from __future__ import annotations

import math
import random

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from test_attention import LENGTHS, _flat, _sequences, _tiny
from trl_formatkit.attention import register, varlen_kernel_available


@pytest.fixture
def fresh_dynamo():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _package_frames(reason) -> list[str]:
    return [f"{f.filename}:{f.lineno}" for f in reason.user_stack if "trl_formatkit" in f.filename]


def test_no_graph_break_in_training_forward(fresh_dynamo):
    model = _tiny("llama")
    model.train()
    model.set_attn_implementation(register())
    explanation = torch._dynamo.explain(model)(**_flat(_sequences()))
    assert explanation.graph_count >= 1
    inside = [(r.reason, _package_frames(r)) for r in explanation.break_reasons if _package_frames(r)]
    assert not inside, inside
    assert explanation.graph_break_count == 0, [r.reason for r in explanation.break_reasons]  # transformers 5.23


def test_recompilations_stay_bounded_as_tokens_per_step_change(fresh_dynamo):
    """The first new shape recompiles with dynamic sizes; later token counts, sequence counts and max lengths
    reuse it."""
    model = _tiny("llama")
    model.train()
    model.set_attn_implementation(register())
    compiled = torch.compile(model, backend="eager")
    rng = random.Random(0)
    graphs = []
    for _ in range(5):
        lengths = [rng.randint(1, 40) for _ in range(rng.randint(2, 9))]
        compiled(**_flat(_sequences(lengths))).loss.backward()
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[-1] <= 2, graphs
    assert graphs[1:] == [graphs[1]] * 4, graphs


def test_dynamic_compilation_compiles_once_for_every_token_count(fresh_dynamo):
    """``torch.compile(model, dynamic=True)``: one graph from the first step on (nothing in this package's code
    specialises on the token count, the sequence count or the max lengths)."""
    model = _tiny("llama")
    model.train()
    model.set_attn_implementation(register())
    compiled = torch.compile(model, backend="eager", dynamic=True)
    rng = random.Random(1)
    for _ in range(4):
        lengths = [rng.randint(2, 40) for _ in range(rng.randint(2, 9))]
        compiled(**_flat(_sequences(lengths))).loss.backward()
    assert counters["stats"]["unique_graphs"] == 1, counters["stats"]


def test_compiled_matches_eager(fresh_dynamo):
    model = _tiny("qwen2")
    model.set_attn_implementation(register())
    batch = _flat(_sequences())
    with torch.no_grad():
        expected = model(**batch).logits
        got = torch.compile(model, backend="eager")(**batch).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert got.shape[1] == sum(LENGTHS)


@pytest.mark.skipif(not varlen_kernel_available(), reason="needs torch>=2.10 and an Ampere+ CUDA GPU")
def test_cuda_kernel_path_has_no_graph_break(fresh_dynamo):
    model = _tiny("llama").cuda().to(torch.bfloat16)
    model.train()
    model.set_attn_implementation(register())
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in _flat(_sequences()).items()}
    explanation = torch._dynamo.explain(model)(**batch)
    inside = [(r.reason, _package_frames(r)) for r in explanation.break_reasons if _package_frames(r)]
    print("graph breaks:", explanation.graph_break_count, [r.reason for r in explanation.break_reasons])
    assert not inside, inside


# dynamo reads .grad of a non-leaf tensor while it traces trl's chunked_logprob: torch's warning, not ours
@pytest.mark.filterwarnings("ignore:The .grad attribute of a Tensor that is not a leaf:UserWarning")
def test_sft_trainer_compiles_flattened_batches_once(load_tokenizer, tmp_path, fresh_dynamo):
    """``SFTConfig(torch_compile=True)`` with padding-free batches on this attention trains without recompiling as
    the token count changes: the trainer asks for dynamic sizes from the first step (torch's default compiles
    everything again at the second step: 3 graphs, then 6), and compiles each decoder layer alone (accelerate's
    regional compilation); the saved model has the keys of the model given, nothing of the compiled wrappers."""
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from test_sft_integration import _chats, _sft_config, _tiny_llama

    from transformers import TrainerCallback

    from trl_formatkit import SFTTrainer

    tok = load_tokenizer("phi-3-mini")
    tok.pad_token = tok.unk_token
    model = _tiny_llama(tok)
    model.set_attn_implementation(register())
    args = _sft_config(tmp_path, padding_free=True, max_length=None, torch_compile=True, torch_compile_backend="eager")
    args.max_steps, args.per_device_train_batch_size = 3, 4
    trainer = SFTTrainer(model=model, args=args, processing_class=tok,
                         train_dataset=datasets.Dataset.from_list([{"messages": c} for c in _chats(12, seed=3)]))
    assert trainer.accelerator.state.dynamo_plugin.dynamic is True
    assert trainer.accelerator.state.dynamo_plugin.use_regional_compilation is True
    keys = set(model.state_dict())
    graphs = []
    trainer.add_callback(type("Graphs", (TrainerCallback,), {
        "on_step_end": lambda self, *a, **k: graphs.append(counters["stats"]["unique_graphs"])})())
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == 3 and all(math.isfinite(x) for x in losses)
    tokens = {len(r) for r in trainer.train_dataset["input_ids"]}
    assert len(tokens) > 3  # every step holds another number of tokens
    assert graphs[0] >= 1 and graphs == [graphs[0]] * 3, graphs  # (trl's loss code breaks the graph: several)
    from accelerate.utils.other import has_compiled_regions

    assert has_compiled_regions(trainer.model_wrapped)
    assert all(type(layer).__name__ == "OptimizedModule" for layer in trainer.model_wrapped.model.layers)
    trainer.save_model(str(tmp_path / "saved"))
    from safetensors.torch import load_file

    saved = set(load_file(str(tmp_path / "saved" / "model.safetensors")))
    assert saved == keys - {"lm_head.weight"} or saved == keys, sorted(saved ^ keys)[:5]


@pytest.mark.parametrize("setting, regional", [(None, True), ("false", False), ("true", True)])
def test_sft_trainer_regional_compilation_keeps_an_explicit_choice(load_tokenizer, tmp_path, monkeypatch, setting,
                                                                   regional):
    """Regional compilation is the default for flattened batches; ``ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION``
    set either way is kept (padded batches keep accelerate's default: whole model)."""
    pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    from test_sft_integration import _chats, _sft_config, _tiny_llama

    from trl_formatkit import SFTTrainer

    if setting is None:
        monkeypatch.delenv("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION", raising=False)
    else:
        monkeypatch.setenv("ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION", setting)
    tok = load_tokenizer("phi-3-mini")
    tok.pad_token = tok.unk_token
    data = datasets.Dataset.from_list([{"messages": c} for c in _chats(4, seed=3)])
    plugins = {}
    for flat in (True, False):
        args = _sft_config(tmp_path, padding_free=flat, max_length=None, torch_compile=True,
                           torch_compile_backend="eager")
        trainer = SFTTrainer(model=_tiny_llama(tok), args=args, processing_class=tok, train_dataset=data)
        plugins[flat] = trainer.accelerator.state.dynamo_plugin
    assert plugins[True].use_regional_compilation is regional
    assert plugins[False].use_regional_compilation is (setting == "true")
    assert plugins[False].dynamic is None
