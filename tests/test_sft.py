"""``trl_formatkit.SFTTrainer``: real trl runs on a tiny random-weight Llama with the phi-3-mini tokenizer.

Each acceptance run checks what the model is fed in its first batch (trained tokens are exactly the answers and
their end markers) and that the loss falls. The other tests are hostile: a wrong template, truncation that
empties rows, PAD == EOS, double BOS, a custom collator with padding-free, wrapped packing.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest

pytest.importorskip("trl")
pytest.importorskip("datasets")
torch = pytest.importorskip("torch")

from test_sft_integration import (  # noqa: E402  (tests/ is on sys.path: conftest)
    EOS,
    _chats,
    _expected_spans,
    _Recorder,
    _runs,
    _sft_config,
    _tiny_llama,
    phi,  # noqa: F401  (fixture)
)

from trl_formatkit import DataCollatorForCompletionOnlyLM, FormatKitValueError, FormatKitWarning  # noqa: E402

TEMPLATES = {"response_template": "<|assistant|>", "instruction_template": "<|user|>"}
STEPS, BATCH = 6, 4  # half of test_sft_integration's steps and rows: the whole file stays lean on 2 cores


def _losses(trainer) -> list[float]:
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == STEPS and np.isfinite(losses).all()
    return losses


def _assert_loss_falls(losses: list[float], by: float = 1.5) -> None:
    first, last = np.mean(losses[:2]), np.mean(losses[-2:])
    assert last < first - by, f"loss did not fall by {by}: {losses}"  # starts near ln(32064) = 10.4


def _structure():
    return pytest.importorskip("trl_formatkit.structure", reason="trl_formatkit.structure is not on this branch yet")


def _trainer(tok, dataset, tmp_path, *, model=None, collator=None, config=None, **kwargs):
    from trl_formatkit import SFTTrainer

    model = model if model is not None else _tiny_llama(tok)
    args = _sft_config(tmp_path, **(config or {}))
    args.max_steps, args.per_device_train_batch_size = STEPS, BATCH
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=dataset,
        processing_class=tok,
        data_collator=collator,
        **kwargs,
    )


def _sequences(batch) -> list[tuple[list[int], np.ndarray]]:
    """(ids, labels) of each sequence of a fed batch: padded rows, or a flattened / packed row cut at position 0."""
    ids, labels = batch["input_ids"].numpy(), batch["labels"].numpy()
    out = []
    for r in range(ids.shape[0]):
        if "attention_mask" in batch:
            keep = batch["attention_mask"].numpy()[r].astype(bool)
            row_ids, row_labels, starts = ids[r][keep], labels[r][keep], [0]
        else:
            row_ids, row_labels = ids[r], labels[r]
            starts = np.flatnonzero(batch["position_ids"].numpy()[r] == 0).tolist()
        bounds = [*starts, len(row_ids)]
        out += [(row_ids[a:b].tolist(), row_labels[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    return out


def _assert_first_batch_trains_the_answers(recorder, chats_by_ids, tok) -> int:
    """Every sequence of the first fed batch trains exactly its chat's answers with their end markers."""
    sequences = _sequences(recorder.fed[0])
    for ids, labels in sequences:
        messages = chats_by_ids[tuple(ids)]
        assert ((labels == -100) | (labels == np.asarray(ids))).all()
        assert [tok.decode(run) for run in _runs(labels)] == _expected_spans(messages, tok)
        assert labels[0] == -100
    return len(sequences)


def _text_rows(tok, n=16, seed=0):
    from datasets import Dataset

    chats = _chats(n, seed=seed)
    texts = [tok.apply_chat_template(c, tokenize=False) for c in chats]
    by_ids = {tuple(tok(t)["input_ids"]): c for t, c in zip(texts, chats, strict=True)}
    return Dataset.from_dict({"text": texts}), by_ids


# ----------------------------------------------------------------------------------------------------------------
# acceptance runs
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("mode", "config"),
    [
        ("padded", {}),
        ("padding-free collator", {}),
        ("packing", {"packing": True, "max_length": 256}),
    ],
)
def test_template_run_trains_exactly_the_answers(phi, tmp_path, mode, config):
    dataset, chats_by_ids = _text_rows(phi)
    model = _tiny_llama(phi)
    if mode == "padding-free collator":  # trl raises "custom data collator is not supported" for this one
        collator = DataCollatorForCompletionOnlyLM(**TEMPLATES, tokenizer=phi, padding_free=True)
        trainer = _trainer(phi, dataset, tmp_path, model=model, collator=collator, config=config)
    else:
        trainer = _trainer(phi, dataset, tmp_path, model=model, config=config, **TEMPLATES)
    recorder = _Recorder(trainer.data_collator, model)
    trainer.data_collator = recorder
    trainer.train()

    fed = recorder.fed[0]
    n = _assert_first_batch_trains_the_answers(recorder, chats_by_ids, phi)
    if mode == "padded":
        assert "attention_mask" in fed and n == BATCH
    else:
        assert "attention_mask" not in fed and fed["input_ids"].shape[0] == 1
        assert int(fed["cu_seq_lens_q"][-1]) == fed["input_ids"].shape[1]
        assert n == BATCH if mode != "packing" else n > BATCH  # packed rows hold several chats
    _assert_loss_falls(_losses(trainer))


def test_padding_free_collator_with_packing_is_accepted(phi, tmp_path, caplog):
    """trl 1.16 raises for any custom collator under bfd packing; ours is accepted and its settings logged."""
    dataset, _ = _text_rows(phi, n=8)
    collator = DataCollatorForCompletionOnlyLM(**TEMPLATES, tokenizer=phi)  # padding_free=False
    with caplog.at_level(logging.INFO, logger="trl_formatkit"):
        trainer = _trainer(phi, dataset, tmp_path, collator=collator, config={"packing": True, "max_length": 128})
    assert "using the data collator's settings" in caplog.text
    assert "padding_free=True although the collator says False" in caplog.text
    assert trainer.data_collator.padding_free and set(trainer.train_dataset.column_names) >= {"labels", "seq_lengths"}


# ----------------------------------------------------------------------------------------------------------------
# the whole-dataset check
# ----------------------------------------------------------------------------------------------------------------
def test_a_wrong_template_stops_before_training_with_a_decoded_row(phi, tmp_path):
    dataset, _ = _text_rows(phi, n=6)
    with pytest.raises(FormatKitValueError) as caught:
        _trainer(phi, dataset, tmp_path, response_template="### Answer:")
    message = str(caught.value)
    assert "6 of 6 rows of the train dataset train nothing" in message
    assert "'### Answer:'" in message and "<|assistant|>" in message  # the template and a decoded row
    assert "Fix:" in message and "train_loss 0.0" in message


def test_rows_emptied_by_truncation_are_dropped_and_counted_once(phi, tmp_path, caplog):
    from datasets import Dataset

    dataset, _ = _text_rows(phi, n=8)
    long_prompt = phi.apply_chat_template(
        [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "Short."}], tokenize=False
    )
    dataset = Dataset.from_dict({"text": list(dataset["text"]) + [long_prompt] * 2})
    with caplog.at_level(logging.WARNING, logger="trl_formatkit"):
        trainer = _trainer(phi, dataset, tmp_path, config={"max_length": 64}, **TEMPLATES)
    lines = [r.getMessage() for r in caplog.records if "train nothing" in r.getMessage()]
    assert len(lines) == 1 and "dropped 2 of 10 rows" in lines[0] and "2 emptied by max_length=64" in lines[0]
    assert len(trainer.train_dataset) == 8
    assert all(len(r) <= 64 and any(x != -100 for x in r) for r in trainer.train_dataset["labels"])


def test_most_rows_emptied_by_truncation_is_an_error(phi, tmp_path):
    dataset, _ = _text_rows(phi, n=4)
    with pytest.raises(FormatKitValueError, match=r"max_length=8 cuts every trained token"):
        _trainer(phi, dataset, tmp_path, config={"max_length": 8}, **TEMPLATES)


# ----------------------------------------------------------------------------------------------------------------
# tokenizer audit, formats, settings
# ----------------------------------------------------------------------------------------------------------------
def test_pad_equals_eos_is_fixed_and_logged_unless_turned_off(load_tokenizer, tmp_path, caplog):
    tok = load_tokenizer("phi-3-mini")
    assert tok.pad_token_id == EOS  # phi-3-mini ships PAD == EOS
    dataset, _ = _text_rows(tok, n=4)
    with caplog.at_level(logging.WARNING, logger="trl_formatkit"):
        trainer = _trainer(tok, dataset, tmp_path, **TEMPLATES)
    assert tok.pad_token == "<unk>" and "pad-equals-eos" in caplog.text
    assert trainer.model.config.pad_token_id == tok.pad_token_id != EOS

    kept = load_tokenizer("phi-3-mini")
    _trainer(kept, dataset, tmp_path, fix_tokenizer=False, **TEMPLATES)
    assert kept.pad_token_id == EOS


def test_double_bos_of_rendered_text_is_removed(load_tokenizer, tmp_path):
    from datasets import Dataset

    from trl_formatkit import add_chat_template

    tok = add_chat_template(load_tokenizer("llama-2"))  # the chapter's ChatML on <s>/</s>: text starts with <s>
    tok.pad_token = tok.unk_token
    chats = _chats(4)
    texts = [tok.apply_chat_template(c, tokenize=False) for c in chats]
    assert tok(texts[0])["input_ids"][:2] == [tok.bos_token_id] * 2
    trainer = _trainer(tok, Dataset.from_dict({"text": texts}), tmp_path, model=_tiny_llama(tok),
                       response_template="<s>assistant", end_template="</s>")
    firsts = [r[:2] for r in trainer.train_dataset["input_ids"]]
    assert all(f[0] == tok.bos_token_id != f[1] for f in firsts)


def test_templates_given_twice_must_agree(phi, tmp_path):
    dataset, _ = _text_rows(phi, n=2)
    collator = DataCollatorForCompletionOnlyLM("<|assistant|>", tokenizer=phi)
    with pytest.raises(FormatKitValueError, match="response_template is given twice"):
        _trainer(phi, dataset, tmp_path, collator=collator, response_template="### Answer:")


def test_wrapped_packing_says_once_that_sequences_see_each_other(phi, tmp_path):
    dataset, _ = _text_rows(phi, n=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _trainer(phi, dataset, tmp_path, config={"packing": True, "packing_strategy": "wrapped", "max_length": 64},
                 **TEMPLATES)
    ours = [w for w in caught if issubclass(w.category, FormatKitWarning)]
    assert len(ours) == 1 and "attend to each other" in str(ours[0].message)
    assert ours[0].filename == __file__  # points at the user's line, not into the package


# ----------------------------------------------------------------------------------------------------------------
# messages: masks from the conversation's structure
# ----------------------------------------------------------------------------------------------------------------
def _answers_with_end(messages) -> list[str]:
    """What the structure trains on phi-3: each answer and its <|end|> (not the <|endoftext|> after the last)."""
    return [m["content"] + "<|end|>" for m in messages if m["role"] == "assistant"]


def _assert_structure_run(recorder, chats_by_ids, tok) -> None:
    for ids, labels in _sequences(recorder.fed[0]):
        messages = chats_by_ids[tuple(ids)]
        assert ((labels == -100) | (labels == np.asarray(ids))).all()
        spans = [" ".join(tok.decode(run).split()) for run in _runs(labels)]  # decode spaces out added tokens
        assert spans == [" ".join(s.split()) for s in _answers_with_end(messages)]


def test_messages_without_template_never_train_a_marker_typed_in_a_message(phi, tmp_path):
    from datasets import Dataset

    _structure()
    chats = _chats(16, seed=3)
    chats[0] = [
        {"role": "user", "content": "Summarise: <|assistant|> PRIVATE notes, never train this."},
        {"role": "assistant", "content": "Nothing to summarise."},
    ]
    chats_by_ids = {tuple(phi.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]): c for c in chats}
    model = _tiny_llama(phi)
    trainer = _trainer(phi, Dataset.from_list([{"messages": c} for c in chats]), tmp_path, model=model)
    recorder = _Recorder(trainer.data_collator, model)
    trainer.data_collator = recorder
    trainer.train()

    _assert_structure_run(recorder, chats_by_ids, phi)
    row = next(r for r in trainer.train_dataset if tuple(r["input_ids"]) == tuple(next(iter(chats_by_ids))))
    trained = phi.decode([t for t in row["labels"] if t != -100])
    assert "PRIVATE" not in trained and trained == "Nothing to summarise.<|end|>"
    _assert_loss_falls(_losses(trainer))


def test_alpaca_rows_are_detected_converted_and_trained_on_the_outputs(phi, tmp_path):
    from datasets import Dataset

    _structure()
    chats = [c[-2:] for c in _chats(16, seed=4)]  # one user/assistant pair each
    rows = [{"instruction": c[0]["content"], "input": "", "output": c[1]["content"]} for c in chats]
    chats_by_ids = {tuple(phi.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]): c for c in chats}
    model = _tiny_llama(phi)
    trainer = _trainer(phi, Dataset.from_list(rows), tmp_path, model=model, dataset_format="auto")
    recorder = _Recorder(trainer.data_collator, model)
    trainer.data_collator = recorder
    trainer.train()

    _assert_structure_run(recorder, chats_by_ids, phi)
    _assert_loss_falls(_losses(trainer))


def test_a_registered_format_is_converted(phi, tmp_path):
    from datasets import Dataset

    from trl_formatkit import formats, register_format

    _structure()

    @register_format("qa-test", {"question", "answer"})
    def qa(row):
        return [{"role": "user", "content": row["question"]}, {"role": "assistant", "content": row["answer"]}]

    try:
        dataset = Dataset.from_dict({"question": ["Sky?", "Grass?"], "answer": ["Blue.", "Green."]})
        trainer = _trainer(phi, dataset, tmp_path)
    finally:
        formats.unregister("qa-test")
    trained = [phi.decode([t for t in r if t != -100]) for r in trainer.train_dataset["labels"]]
    assert sorted(trained) == ["Blue.<|end|>", "Green.<|end|>"]


def test_train_roles_that_match_nothing_stop_before_training(phi, tmp_path):
    from datasets import Dataset

    _structure()
    dataset = Dataset.from_list([{"messages": c} for c in _chats(4)])
    with pytest.raises(FormatKitValueError, match=r"train_roles=\('bot',\)"):
        _trainer(phi, dataset, tmp_path, train_roles=("bot",))


def test_lora_trains_a_new_special_token(phi, tmp_path, caplog):
    """A token added to the tokenizer is made trainable under LoRA (trainable_token_indices): its row changes."""
    from datasets import Dataset
    from peft import LoraConfig

    from trl_formatkit import fix_special_tokens

    _structure()
    fix_special_tokens(phi, extra_special_tokens=["<|tool|>"])
    tool = phi.convert_tokens_to_ids("<|tool|>")
    assert tool == 32011  # a new id, inside the model's 32064 rows: no resize, but an untrained row
    chats = _chats(16, seed=5)
    for chat in chats:
        for m in chat:
            if m["role"] == "assistant":
                m["content"] = "<|tool|> " + m["content"]
    chats_by_ids = {tuple(phi.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]): c for c in chats}
    model = _tiny_llama(phi)
    before = model.get_input_embeddings().weight.detach().clone()
    config = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    with caplog.at_level(logging.WARNING, logger="trl_formatkit"):
        trainer = _trainer(phi, Dataset.from_list([{"messages": c} for c in chats]), tmp_path, model=model,
                           peft_config=config)
    assert "new token ids [32011] are trained" in caplog.text and "ensure_weight_tying" in caplog.text
    recorder = _Recorder(trainer.data_collator, model)
    trainer.data_collator = recorder
    trainer.train()

    _assert_structure_run(recorder, chats_by_ids, phi)
    embed = trainer.model.get_input_embeddings()
    with torch.no_grad():
        row = embed(torch.tensor([[tool]]))[0, 0]
    assert not torch.allclose(row, before[tool]), "the new token's embedding row did not change"
    assert torch.equal(embed.original_module.weight, before)  # the base weights stay frozen: a trained copy
    _assert_loss_falls(_losses(trainer), by=0.5)


def test_qlora_example_runs_on_cpu_without_4bit(tmp_path):
    """examples/qlora_sft.py (the GPU run of benchmarks/RESULTS.md), tiny and without bitsandbytes."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / "qlora_sft.py"
    spec = importlib.util.spec_from_file_location("qlora_sft", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    report = example.main(["--no-4bit", "--hidden", "64", "--layers", "1", "--rows", "24", "--steps", "2",
                           "--batch-size", "2", "--max-length", "512", "--output-dir", str(tmp_path)])
    first = report["first_batch"]
    assert first["sequences"] > 2 and first["trained_tokens"] > 0  # packed: more sequences than rows
    assert first["every_run_ends_with_end"] and first["no_marker_trained"]
    assert report["steps"] == 2 and all(np.isfinite(report["losses"]))


def test_skip_prepare_dataset_keeps_the_collator_that_labels_each_batch(phi, tmp_path):
    """Without preparation there is no labels column: trl's collator would train every token."""
    from datasets import Dataset

    rows = [{"input_ids": phi(t)["input_ids"]} for t in _text_rows(phi, n=2)[0]["text"]]
    collator = DataCollatorForCompletionOnlyLM(**TEMPLATES, tokenizer=phi)
    trainer = _trainer(phi, Dataset.from_list(rows), tmp_path, collator=collator,
                       config={"dataset_kwargs": {"skip_prepare_dataset": True}})
    assert trainer.data_collator is collator
    batch = trainer.data_collator([trainer.train_dataset[0]])
    assert (batch["labels"] == -100).sum() > 0


def test_text_rows_without_template_use_the_chat_templates_markers(phi, tmp_path, caplog):
    from datasets import Dataset

    _structure()
    dataset, chats_by_ids = _text_rows(phi, n=6)
    plain = Dataset.from_dict({"text": ["Just some prose to model.", "More prose, every token trained."]})
    with caplog.at_level(logging.INFO, logger="trl_formatkit"):
        marked = _trainer(phi, dataset, tmp_path)
        unmarked = _trainer(phi, plain, tmp_path)
    assert "labels from the chat template's markers" in caplog.text and "training on every token" in caplog.text
    for row in marked.train_dataset:
        messages = chats_by_ids[tuple(row["input_ids"])]
        assert [phi.decode(run) for run in _runs(np.asarray(row["labels"]))] == _answers_with_end(messages)
    assert all(r["labels"][1:] == r["input_ids"][1:] for r in unmarked.train_dataset)  # trl's language modelling


@pytest.mark.parametrize("give_tokenizer", [True, False])
def test_a_model_given_by_name_is_resized_for_the_fixed_tokenizer(load_tokenizer, tmp_path, caplog, give_tokenizer):
    """GPT-2 has no PAD: the fix adds <pad> as id 50257, one past the model's 50257 rows. A model given by name was
    loaded by trl after the fix and never resized (an IndexError at the first padded batch); without a tokenizer
    the audit did not run at all."""
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer("gpt2")
    assert tok.pad_token is None and len(tok) == 50257
    folder = tmp_path / "tiny-gpt2-vocab"
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=50257, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                 eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)).save_pretrained(folder)
    tok.save_pretrained(folder)
    rows = [{"text": f"### Question: what is {i} plus {i}?\n### Answer: {2 * i} ({'many ' * (i % 5)}words)"}
            for i in range(8)]
    with caplog.at_level(logging.WARNING, logger="trl_formatkit"):
        trainer = _trainer(tok if give_tokenizer else None, Dataset.from_list(rows), tmp_path, model=str(folder),
                           response_template="### Answer:")
    fixed = trainer.processing_class
    assert fixed.pad_token == "<pad>" and fixed.pad_token_id == 50257
    assert trainer.model.get_input_embeddings().weight.shape[0] >= len(fixed)
    assert "resized the embeddings from 50257" in caplog.text
    trainer.train()
    assert np.isfinite(_losses(trainer)).all()
