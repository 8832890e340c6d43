"""A real trl ``SFTTrainer`` run with our collator: what the model is fed, and that it learns.

A tiny random-weight Llama (hidden 32, 2 layers, vocabulary 32064 like Phi-3-mini) and the real phi-3-mini
tokenizer (PAD set to ``<unk>``, as in the book), trained on CPU on a handful of multi-turn chats with
``DataCollatorForCompletionOnlyLM("<|assistant|>", instruction_template="<|user|>", tokenizer=tok)``:

- padded, from a ``text`` column (the chats pre-rendered with the chat template, as the book does);
- ``padding_free=True`` on *our* collator, from a ``messages`` column, with trl's own ``SFTConfig(padding_free=False)``
  (trl refuses a custom collator together with its ``padding_free=True``).

What trl 1.16 does around a custom collator (checked here, so a trl upgrade that changes it fails loudly):

- it tokenizes ``messages`` with the chat template (``text`` with the tokenizer, adding EOS where missing), builds a
  ``labels`` column (a copy of ``input_ids``: ``completion_only_loss`` applies only to prompt/completion rows,
  ``assistant_only_loss`` defaults to False), truncates to ``max_length``, and then ``remove_unused_columns=True``
  (the default) hands the collator exactly ``input_ids`` and ``labels``; our collator replaces the labels. With
  ``remove_unused_columns=False`` the raw ``messages`` column reaches the collator too, which drops it.
  ``completion_mask`` / ``assistant_masks`` never reach a collator: trl folds them into ``labels`` and drops them.
- ``compute_loss`` forwards every key the collator returns to the model (``cu_seq_lens_q/k``, ``max_length_q/k``,
  ``seq_idx`` included) and counts tokens from ``attention_mask`` or, padding-free, from ``position_ids``.

Padding-free attention on CPU: transformers 5's ``sdpa`` path builds a block-diagonal causal mask from
``position_ids`` when there is no ``attention_mask`` and no KV cache (``masking_utils.find_packed_sequence_indices``;
trl passes ``use_cache=False``), so sequences do not see each other; ``trl_formatkit.attention.register()`` (exact
per-sequence fallback on CPU) is used where it exists. ``test_padding_free_attention_respects_boundaries`` checks
both against the padded batch, and that sdpa does leak across sequences when a KV cache is on.
"""

from __future__ import annotations

import importlib.util
import itertools
import random

import numpy as np
import pytest

pytest.importorskip("trl")
pytest.importorskip("datasets")
torch = pytest.importorskip("torch")

from trl_formatkit import DataCollatorForCompletionOnlyLM  # noqa: E402

ASSISTANT, USER, END, EOS = 32001, 32010, 32007, 32000  # phi-3-mini ids
WORDS = "red blue green sky tree cat dog runs jumps fast slow big small sun moon water stone".split()
STEPS = 12
HAS_FORMATKIT_ATTENTION = importlib.util.find_spec("trl_formatkit.attention") is not None


def _chats(n: int, seed: int = 0) -> list[list[dict[str, str]]]:
    rng = random.Random(seed)

    def sentence(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k)) + rng.choice([".", "!", "?"])

    chats = []
    for i in range(n):
        messages = [{"role": "system", "content": "Answer briefly."}] if i % 3 == 0 else []
        for _ in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": sentence(rng.randint(3, 8))})
            messages.append({"role": "assistant", "content": sentence(rng.randint(2, 6))})
        chats.append(messages)
    return chats


@pytest.fixture
def phi(load_tokenizer):
    tok = load_tokenizer("phi-3-mini")
    tok.pad_token = tok.unk_token  # the book: PAD = UNK, never EOS
    assert tok.pad_token_id == 0 and tok.eos_token_id == EOS and tok.padding_side == "left"
    return tok


def _tiny_llama(tok, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=32064,  # Phi-3-mini's embedding size (the tokenizer has 32011 tokens)
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        tie_word_embeddings=True,
    )
    config._attn_implementation = "sdpa"
    return LlamaForCausalLM(config)


def _attention_name(model) -> str:
    """trl_formatkit's padding-free attention where it exists, else transformers' sdpa (boundary-aware too)."""
    if not HAS_FORMATKIT_ATTENTION:
        return "sdpa"
    from trl_formatkit.attention import register

    name = register()
    model.set_attn_implementation(name)
    return name


def _sft_config(tmp_path, **kwargs):
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(tmp_path / "out"),
        report_to="none",
        use_cpu=True,
        bf16=False,
        save_strategy="no",
        max_steps=STEPS,
        per_device_train_batch_size=8,
        learning_rate=2e-2,
        lr_scheduler_type="constant",
        warmup_steps=0,
        logging_steps=1,
        gradient_checkpointing=False,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=0,
        **kwargs,
    )


class _Recorder:
    """Wraps the collator and the model to keep what trl hands the collator and what the model is fed."""

    def __init__(self, collator, model):
        self.collator = collator
        self.rows_in: list[list[dict]] = []
        self.fed: list[dict] = []
        model.register_forward_pre_hook(self._hook, with_kwargs=True)

    def __call__(self, examples):
        self.rows_in.append([dict(e) for e in examples])
        return self.collator(examples)

    def _hook(self, module, args, kwargs):
        assert not args, "trl calls the model with keyword arguments only"
        self.fed.append({k: v.detach().clone() if torch.is_tensor(v) else v for k, v in kwargs.items()})


def _expected_spans(messages, tok) -> list[str]:
    """Decoded text of what must be trained: each answer with its <|end|>; the last one also the <|endoftext|>."""
    answers = [m["content"] + "<|end|>" for m in messages if m["role"] == "assistant"]
    answers[-1] += tok.eos_token
    return answers


def _runs(labels: np.ndarray) -> list[list[int]]:
    """Contiguous runs of trained labels in one sequence."""
    trained = labels != -100
    runs, current = [], []
    for keep, value in zip(trained.tolist(), labels.tolist(), strict=True):
        if keep:
            current.append(value)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return runs


def _sequences(batch) -> list[tuple[list[int], np.ndarray]]:
    """(input ids, labels) of each sequence of a fed batch, padded or flattened."""
    ids = batch["input_ids"].numpy()
    labels = batch["labels"].numpy()
    if "attention_mask" in batch:
        mask = batch["attention_mask"].numpy().astype(bool)
        return [(ids[i][mask[i]].tolist(), labels[i][mask[i]]) for i in range(ids.shape[0])]
    assert ids.shape[0] == 1
    starts = np.flatnonzero(batch["position_ids"].numpy()[0] == 0).tolist() + [ids.shape[1]]
    np.testing.assert_array_equal(batch["cu_seq_lens_q"].numpy(), starts)
    return [(ids[0, a:b].tolist(), labels[0, a:b]) for a, b in itertools.pairwise(starts)]


def _assert_trains_exactly_the_answers(batch, chats_by_ids, tok) -> int:
    sequences = _sequences(batch)
    assert len(sequences) == 8
    for ids, labels in sequences:
        messages = chats_by_ids[tuple(ids)]  # the chat this sequence was rendered from
        assert ((labels == -100) | (labels == np.asarray(ids))).all()  # a label is -100 or the input id
        spans = [tok.decode(run) for run in _runs(labels)]
        assert spans == _expected_spans(messages, tok)
        assert labels[0] == -100 and ids[0] in (USER, 32006)  # starts with <|user|> or <|system|>, masked
    return len(sequences)


def _losses(trainer) -> list[float]:
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    assert len(losses) == STEPS
    return losses


def _assert_loss_falls(losses: list[float]) -> None:
    first, last = np.mean(losses[:3]), np.mean(losses[-3:])
    assert np.isfinite(losses).all()
    assert last < first - 3.0, f"loss did not fall: {losses}"  # starts near ln(32064) = 10.4; ~3 after 12 steps


def test_padded_run_trains_exactly_the_answers(phi, tmp_path):
    from datasets import Dataset
    from trl import SFTTrainer

    chats = _chats(16)
    texts = [phi.apply_chat_template(c, tokenize=False) for c in chats]
    chats_by_ids = {tuple(phi(t)["input_ids"]): c for t, c in zip(texts, chats, strict=True)}
    model = _tiny_llama(phi)
    collator = DataCollatorForCompletionOnlyLM("<|assistant|>", instruction_template="<|user|>", tokenizer=phi)
    recorder = _Recorder(collator, model)
    trainer = SFTTrainer(
        model=model,
        args=_sft_config(tmp_path),
        train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=phi,
        data_collator=recorder,
    )
    trainer.train()

    # what trl hands a custom collator: the ids and a labels column that is a copy of them (replaced by ours)
    first_rows = recorder.rows_in[0]
    assert {frozenset(r) for r in first_rows} == {frozenset({"input_ids", "labels"})}
    assert all(r["labels"] == r["input_ids"] for r in first_rows)
    # what the model is fed: our padded batch, left-padded with PAD = <unk> = 0
    fed = recorder.fed[0]
    assert set(fed) >= {"input_ids", "attention_mask", "labels"} and "position_ids" not in fed
    ids, mask = fed["input_ids"], fed["attention_mask"]
    assert (ids[mask == 0] == 0).all() and (fed["labels"][mask == 0] == -100).all()
    assert (mask[:, -1] == 1).all(), "left padding: every row ends with a real token"
    assert _assert_trains_exactly_the_answers(fed, chats_by_ids, phi) == 8
    _assert_loss_falls(_losses(trainer))


def test_padding_free_run_trains_exactly_the_answers(phi, tmp_path):
    from datasets import Dataset
    from trl import SFTTrainer

    chats = _chats(16, seed=1)
    chats_by_ids = {tuple(phi.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"]): c
                    for c in chats}
    model = _tiny_llama(phi)
    attention = _attention_name(model)
    collator = DataCollatorForCompletionOnlyLM(
        "<|assistant|>", instruction_template="<|user|>", tokenizer=phi, padding_free=True
    )
    recorder = _Recorder(collator, model)
    trainer = SFTTrainer(
        model=model,
        # trl's own padding_free stays False: it rejects custom collators; ours does the flattening.
        # remove_unused_columns=False: the raw "messages" column reaches the collator too, which drops it.
        args=_sft_config(tmp_path, padding_free=False, remove_unused_columns=False),
        train_dataset=Dataset.from_list([{"messages": c} for c in chats]),
        processing_class=phi,
        data_collator=recorder,
    )
    trainer.train()

    assert model.config._attn_implementation == attention
    first_rows = recorder.rows_in[0]
    assert {frozenset(r) for r in first_rows} == {frozenset({"input_ids", "labels", "messages"})}
    fed = recorder.fed[0]
    assert "attention_mask" not in fed and "messages" not in fed
    assert set(fed) >= {"input_ids", "labels", "position_ids", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
                        "max_length_k"}
    n_tokens = sum(len(r["input_ids"]) for r in first_rows)
    assert fed["input_ids"].shape == (1, n_tokens)  # no padding at all
    assert fed["cu_seq_lens_q"].dtype == torch.int32 and int(fed["cu_seq_lens_q"][-1]) == n_tokens
    assert _assert_trains_exactly_the_answers(fed, chats_by_ids, phi) == 8
    _assert_loss_falls(_losses(trainer))


def test_trl_rejects_its_own_padding_free_with_a_custom_collator(phi, tmp_path):
    """Why the padding-free run keeps SFTConfig(padding_free=False): set it on our collator instead."""
    from datasets import Dataset
    from trl import SFTTrainer

    collator = DataCollatorForCompletionOnlyLM("<|assistant|>", tokenizer=phi, padding_free=True)
    with pytest.raises(ValueError, match="custom data collator is not supported when using padding-free"):
        SFTTrainer(
            model=_tiny_llama(phi),
            args=_sft_config(tmp_path, padding_free=True, max_length=None),
            train_dataset=Dataset.from_list([{"messages": c} for c in _chats(2)]),
            processing_class=phi,
            data_collator=collator,
        )


@pytest.mark.parametrize(
    ("attention", "use_cache"), [("sdpa", False), ("formatkit", False), ("formatkit", True), ("sdpa", True)]
)
def test_padding_free_attention_respects_boundaries(phi, attention, use_cache):
    """On CPU the flattened batch gives the padded batch's logits: no sequence attends to another.

    Except transformers' sdpa with a KV cache (``use_cache=True``, the default of a plain ``model(**batch)`` in
    eval mode): transformers then builds no packed-sequence mask and every sequence sees the ones before it. trl
    sets ``use_cache=False`` in ``compute_loss``, so training is right; trl_formatkit's attention is right either way.
    """
    model = _tiny_llama(phi).eval()
    if attention == "formatkit":
        if not HAS_FORMATKIT_ATTENTION:
            pytest.skip("trl_formatkit.attention is not in this checkout yet")
        _attention_name(model)
    rows = [phi.apply_chat_template(c, tokenize=True, return_dict=True)["input_ids"] for c in _chats(4, seed=2)]
    padded = DataCollatorForCompletionOnlyLM("<|assistant|>", "<|user|>", tokenizer=phi)(rows)
    flat = DataCollatorForCompletionOnlyLM("<|assistant|>", "<|user|>", tokenizer=phi, padding_free=True)(rows)
    model_padded = _tiny_llama(phi).eval()  # same seed, same weights, transformers' sdpa on the padded batch
    with torch.no_grad():
        # use_cache=False as in training (trl sets it): with a KV cache, transformers builds no packed-sequence
        # mask for sdpa and the sequences of a flattened batch would attend to each other
        flat_logits = model(**{k: v for k, v in flat.items() if k != "labels"}, use_cache=use_cache).logits[0]
        positions = (padded["attention_mask"].cumsum(-1) - 1).clamp(min=0)  # left padding: count real tokens
        padded_logits = model_padded(
            input_ids=padded["input_ids"], attention_mask=padded["attention_mask"], position_ids=positions
        ).logits
    mask = padded["attention_mask"].bool()
    if attention == "sdpa" and use_cache:  # the leak: all but the first sequence differ
        first = int(flat["cu_seq_lens_q"][1])
        torch.testing.assert_close(flat_logits[:first], padded_logits[mask][:first], atol=1e-4, rtol=1e-4)
        assert (flat_logits[first:] - padded_logits[mask][first:]).abs().max() > 1e-2
        return
    torch.testing.assert_close(flat_logits, padded_logits[mask], atol=1e-4, rtol=1e-4)
