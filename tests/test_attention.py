"""trl_formatkit.attention: padding-free attention registered in transformers.

On CPU the attention runs its exact per-sequence fallback, so a flattened batch must give the logits and the
gradients of the padded batch under ``sdpa`` to float32 rounding (1e-4), for every model family. The GPU test at
the end (skipped without CUDA) checks the varlen kernel itself in bf16.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from trl_formatkit.attention import forward as F
from trl_formatkit.attention import kernels as K
from trl_formatkit.attention.segments import Segments
from trl_formatkit.attention import (
    DEFAULT_NAME,
    register,
    varlen_attention_forward,
    varlen_attention_mask,
    varlen_kernel_available,
)
from trl_formatkit.errors import FormatKitTypeError, FormatKitValueError, FormatKitWarning
from helpers import run_python_json

REPO_ROOT = Path(__file__).resolve().parent.parent
ATOL = RTOL = 1e-4


# ----------------------------------------------------------------------------------------------------------------
# tiny models of four families
# ----------------------------------------------------------------------------------------------------------------
def _tiny(family: str, **overrides):
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
        vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        attention_dropout=0.0,
    )
    common.update(overrides)
    classes = {
        "llama": (LlamaConfig, LlamaForCausalLM, {}),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
        "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
        "phi3": (Phi3Config, Phi3ForCausalLM, {"sliding_window": None}),
    }
    config_cls, model_cls, extra = classes[family]
    torch.manual_seed(0)
    model = model_cls(config_cls(**{**extra, **common})).float()
    model.eval()
    return model


FAMILIES = ("llama", "qwen2", "mistral", "phi3")
LENGTHS = (7, 19, 3, 12, 1)


def _sequences(lengths=LENGTHS, vocab=97, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(3, vocab, (n,), generator=gen) for n in lengths]


def _padded(seqs, side="right", pad_id=0):
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    labels = torch.full_like(ids, -100)
    for i, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[i, sl], mask[i, sl], labels[i, sl] = s, 1, s
        labels[i, sl.start] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _flat(seqs, with_cu=True):
    lengths = [len(s) for s in seqs]
    ids = torch.cat(seqs)[None]
    pos = torch.cat([torch.arange(n) for n in lengths])[None]
    labels = ids.clone()
    labels[pos == 0] = -100  # the first token of a sequence is never a target
    batch = {"input_ids": ids, "labels": labels, "position_ids": pos}
    if with_cu:
        cu = torch.tensor([0, *np.cumsum(lengths).tolist()], dtype=torch.int32)
        batch.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))
    return batch


def _real_logits(logits, batch, lengths):
    mask = batch["attention_mask"].bool()
    return torch.cat([logits[i][mask[i]] for i in range(len(lengths))])


def _forward_backward(model, attn, batch, embeds=False):
    """Loss, logits, parameter gradients and input-embedding gradients of one forward/backward pass."""
    model.set_attn_implementation(attn)
    model.zero_grad(set_to_none=True)
    inputs = dict(batch)
    emb = None
    if embeds:
        emb = model.get_input_embeddings()(inputs.pop("input_ids")).detach().requires_grad_()
        inputs["inputs_embeds"] = emb
    out = model(**inputs)
    out.loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.loss.detach(), out.logits.detach(), grads, None if emb is None else emb.grad.detach()


@pytest.fixture(scope="module")
def name():
    return register()


# ----------------------------------------------------------------------------------------------------------------
# equivalence with sdpa on padded batches
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", FAMILIES)
def test_flattened_batch_matches_padded_sdpa_logits_and_gradients(family, name):
    model = _tiny(family)
    seqs = _sequences()
    padded, flat = _padded(seqs), _flat(seqs)
    loss_p, logits_p, grads_p, emb_p = _forward_backward(model, "sdpa", padded, embeds=True)
    loss_f, logits_f, grads_f, emb_f = _forward_backward(model, name, flat, embeds=True)

    torch.testing.assert_close(loss_f, loss_p, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(logits_f[0], _real_logits(logits_p, padded, LENGTHS), atol=ATOL, rtol=RTOL)
    emb_p_real = _real_logits(emb_p, padded, LENGTHS)
    torch.testing.assert_close(emb_f[0], emb_p_real, atol=ATOL, rtol=RTOL)
    assert grads_f.keys() == grads_p.keys() and len(grads_f) > 10
    for key in grads_p:
        torch.testing.assert_close(grads_f[key], grads_p[key], atol=ATOL, rtol=RTOL, msg=key)


def test_isolation_is_real(name):
    """Guard against a test that cannot fail: full causal attention over the flat row gives different logits."""
    model = _tiny("llama")
    seqs = _sequences()
    flat = _flat(seqs)
    _, isolated, _, _ = _forward_backward(model, name, flat)
    leaky = {k: v for k, v in flat.items() if k in ("input_ids", "labels")}  # no boundaries: one long sequence
    _, mixed, _, _ = _forward_backward(model, name, leaky)
    first = LENGTHS[0]
    torch.testing.assert_close(mixed[0, :first], isolated[0, :first], atol=ATOL, rtol=RTOL)
    assert (mixed[0, first:] - isolated[0, first:]).abs().max() > 1e-2


def test_flattened_batch_in_training_with_use_cache_default(name):
    """transformers 5 makes a KV cache in training when use_cache=True (the config default) and then skips the
    packed-sequence detection its own masks rely on; this attention finds the boundaries itself either way."""
    model = _tiny("llama")
    model.train()
    assert model.config.use_cache
    seqs = _sequences()
    padded = _padded(seqs)
    model.set_attn_implementation("sdpa")
    expected = model(**padded, use_cache=False)
    for flat in (_flat(seqs, with_cu=True), _flat(seqs, with_cu=False)):
        _, logits, _, _ = _forward_backward(model, name, flat)  # use_cache left at its default
        torch.testing.assert_close(logits[0], _real_logits(expected.logits.detach(), padded, LENGTHS),
                                   atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_boundaries_derived_from_position_ids_when_cu_seq_lens_absent(family, name):
    model = _tiny(family)
    seqs = _sequences()
    _, with_cu, grads_cu, _ = _forward_backward(model, name, _flat(seqs, with_cu=True))
    _, derived, grads_pos, _ = _forward_backward(model, name, _flat(seqs, with_cu=False))
    torch.testing.assert_close(derived, with_cu, atol=0, rtol=0)
    for key in grads_cu:
        torch.testing.assert_close(grads_pos[key], grads_cu[key], atol=0, rtol=0)


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_with_this_attention_matches_sdpa(side, name):
    model = _tiny("mistral")
    seqs = _sequences()
    batch = _padded(seqs, side=side)
    loss_s, logits_s, grads_s, _ = _forward_backward(model, "sdpa", batch)
    loss_v, logits_v, grads_v, _ = _forward_backward(model, name, batch)
    torch.testing.assert_close(loss_v, loss_s, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(
        _real_logits(logits_v, batch, LENGTHS), _real_logits(logits_s, batch, LENGTHS), atol=ATOL, rtol=RTOL
    )
    for key in grads_s:
        torch.testing.assert_close(grads_v[key], grads_s[key], atol=ATOL, rtol=RTOL, msg=key)


def test_several_packed_rows_in_one_batch(name):
    """BFD-style rows (batch > 1), each holding several sequences, boundaries from position_ids only."""
    model = _tiny("llama")
    seqs = _sequences((5, 6, 4, 7, 4))  # rows: [5 + 6], [4 + 7]... each row 11 tokens
    rows = [torch.cat(seqs[:2]), torch.cat([seqs[2], seqs[3]])]
    pos = torch.stack([torch.cat([torch.arange(5), torch.arange(6)]), torch.cat([torch.arange(4), torch.arange(7)])])
    _, logits, _, _ = _forward_backward(
        model, name, {"input_ids": torch.stack(rows), "position_ids": pos, "labels": torch.stack(rows)}
    )
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        for row, parts in enumerate([(seqs[0], seqs[1]), (seqs[2], seqs[3])]):
            start = 0
            for s in parts:
                alone = model(input_ids=s[None]).logits[0]
                torch.testing.assert_close(logits[row, start : start + len(s)], alone, atol=ATOL, rtol=RTOL)
                start += len(s)


def test_sliding_window_matches_sdpa(name):
    model = _tiny("mistral", sliding_window=4)
    seqs = _sequences()
    padded, flat = _padded(seqs), _flat(seqs)
    _, logits_p, grads_p, _ = _forward_backward(model, "sdpa", padded)
    _, logits_f, grads_f, _ = _forward_backward(model, name, flat)
    torch.testing.assert_close(logits_f[0], _real_logits(logits_p, padded, LENGTHS), atol=ATOL, rtol=RTOL)
    for key in grads_p:
        torch.testing.assert_close(grads_f[key], grads_p[key], atol=ATOL, rtol=RTOL, msg=key)
    # and the window does act: without it the logits differ
    unwindowed = _tiny("mistral", sliding_window=None)
    _, logits_u, _, _ = _forward_backward(unwindowed, name, flat)
    assert (logits_u - logits_f).abs().max() > 1e-3


def test_generation_with_kv_cache_matches_sdpa(name):
    model = _tiny("llama")
    seqs = _sequences((4, 9, 6))
    batch = _padded(seqs, side="left")
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    model.set_attn_implementation("sdpa")
    expected = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)
    model.set_attn_implementation(name)
    got = model.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **kwargs)
    assert torch.equal(got, expected)


# ----------------------------------------------------------------------------------------------------------------
# the function itself
# ----------------------------------------------------------------------------------------------------------------
def _reference(q, k, v, lengths, scale=None):
    """Per-sequence causal attention with sdpa; q (1, H, N, D), k/v (1, Hkv, N, D) -> (1, N, H, D)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    outs, start = [], 0
    for n in lengths:
        sl = slice(start, start + n)
        outs.append(
            torch.nn.functional.scaled_dot_product_attention(
                q[:, :, sl], k[:, :, sl], v[:, :, sl], is_causal=True, scale=scale
            )
        )
        start += n
    return torch.cat(outs, dim=2).transpose(1, 2)


@given(
    lengths=st.lists(st.integers(1, 9), min_size=1, max_size=6),
    kv_heads=st.sampled_from([1, 2, 4]),
    scale=st.sampled_from([None, 0.3]),
    use_cu=st.booleans(),
)
def test_function_equals_per_sequence_attention(lengths, kv_heads, scale, use_cu):
    torch.manual_seed(len(lengths))
    n = sum(lengths)
    q = torch.randn(1, 4, n, 8)
    k, v = torch.randn(1, kv_heads, n, 8), torch.randn(1, kv_heads, n, 8)
    kwargs = {"position_ids": torch.cat([torch.arange(m) for m in lengths])[None]}
    if use_cu:
        cu = torch.tensor([0, *np.cumsum(lengths).tolist()], dtype=torch.int32)
        kwargs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))
    out, weights = varlen_attention_forward(torch.nn.Module(), q, k, v, None, scaling=scale, **kwargs)
    assert weights is None
    assert out.shape == (1, n, 4, 8)
    torch.testing.assert_close(out, _reference(q, k, v, lengths, scale), atol=1e-5, rtol=1e-5)


def test_dropout_is_applied_per_sequence_in_training():
    lengths = [3, 5]
    q, k, v = torch.randn(1, 2, 8, 4), torch.randn(1, 2, 8, 4), torch.randn(1, 2, 8, 4)
    cu = torch.tensor([0, 3, 8], dtype=torch.int32)
    kw = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=5, max_length_k=5)
    torch.manual_seed(1)
    out, _ = varlen_attention_forward(torch.nn.Module(), q, k, v, None, dropout=0.5, **kw)
    torch.manual_seed(1)
    expected = []
    for start, n in zip((0, 3), lengths, strict=True):
        sl = slice(start, start + n)
        expected.append(
            torch.nn.functional.scaled_dot_product_attention(q[:, :, sl], k[:, :, sl], v[:, :, sl], dropout_p=0.5,
                                                             is_causal=True)
        )
    torch.testing.assert_close(out, torch.cat(expected, 2).transpose(1, 2))
    no_dropout, _ = varlen_attention_forward(torch.nn.Module(), q, k, v, None, **kw)
    assert not torch.allclose(out, no_dropout)


def test_bidirectional_module():
    module = torch.nn.Module()
    module.is_causal = False
    q, k, v = torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4), torch.randn(1, 2, 6, 4)
    cu = torch.tensor([0, 2, 6], dtype=torch.int32)
    out, _ = varlen_attention_forward(module, q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    expected = torch.cat([sdpa(q[:, :, :2], k[:, :, :2], v[:, :, :2]), sdpa(q[:, :, 2:], k[:, :, 2:], v[:, :, 2:])], 2)
    torch.testing.assert_close(out, expected.transpose(1, 2))


def test_mask_function():
    assert varlen_attention_mask(1, 4, 4, attention_mask=None) is None
    assert varlen_attention_mask(2, 4, 4, attention_mask=torch.ones(2, 4, dtype=torch.bool)) is None
    mask = torch.tensor([[0, 1, 0, 1, 1], [1, 1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(varlen_attention_mask(2, 4, 4, attention_mask=mask), mask[:, -4:])  # cut to kv_length
    assert varlen_attention_mask(2, 2, 2, attention_mask=mask) is None  # no padding in the last 2 columns
    assert torch.equal(varlen_attention_mask(2, 5, 5, attention_mask=mask), mask)


def test_no_dense_mask_is_built_for_flattened_batches(name, monkeypatch):
    """The model must hand the attention no 4-D mask (that is the memory padding-free saves)."""
    seen = []
    original = F.varlen_attention_forward

    def spy(module, query, key, value, attention_mask, **kwargs):
        seen.append(attention_mask)
        return original(module, query, key, value, attention_mask, **kwargs)

    from transformers import AttentionInterface

    AttentionInterface.register(name, spy)
    try:
        model = _tiny("llama")
        model.set_attn_implementation(name)
        with torch.no_grad():
            model(**_flat(_sequences()))
    finally:
        AttentionInterface.register(name, original)
    assert seen and all(m is None for m in seen)


# ----------------------------------------------------------------------------------------------------------------
# errors
# ----------------------------------------------------------------------------------------------------------------
def _qkv(n=5):
    return torch.randn(1, 2, n, 4), torch.randn(1, 2, n, 4), torch.randn(1, 2, n, 4)


def test_softcap_raises_with_the_fix():
    with pytest.raises(FormatKitValueError, match=r"soft-capping \(softcap=50.0.*'eager' or 'flex_attention'"):
        varlen_attention_forward(torch.nn.Module(), *_qkv(), None, softcap=50.0)


def test_sinks_raise():
    with pytest.raises(FormatKitValueError, match="attention sinks"):
        varlen_attention_forward(torch.nn.Module(), *_qkv(), None, s_aux=torch.zeros(2))


def test_gemma2_softcap_model_raises(name):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    config = Gemma2Config(
        vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, attn_logit_softcapping=50.0, sliding_window=64,
    )
    model = Gemma2ForCausalLM(config)
    model.set_attn_implementation(name)
    with pytest.raises(FormatKitValueError, match="softcap"):
        model(**_flat(_sequences((3, 4))), use_cache=False)


@pytest.mark.parametrize(
    "cu, match",
    [
        ([0, 3, 4], r"does not describe this batch of 5 tokens"),
        ([1, 3, 5], r"must start at 0"),
        ([0, 4, 3, 5], r"never decrease"),
        ([[0, 5]], r"1-D integer tensor"),
    ],
)
def test_inconsistent_cu_seq_lens_raise(cu, match):
    cu = torch.tensor(cu, dtype=torch.int32)
    with pytest.raises(FormatKitValueError, match=match):
        varlen_attention_forward(torch.nn.Module(), *_qkv(), None, cu_seq_lens_q=cu, cu_seq_lens_k=cu)


def test_short_max_length_raises():
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    with pytest.raises(FormatKitValueError, match=r"max_length_q/k = 2/2 is shorter .* \(3\)"):
        varlen_attention_forward(
            torch.nn.Module(), *_qkv(), None, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=2, max_length_k=2
        )


def test_max_length_may_be_a_tensor_or_missing():
    q, k, v = _qkv()
    cu = torch.tensor([0, 2, 5], dtype=torch.int32)
    a, _ = varlen_attention_forward(torch.nn.Module(), q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    b, _ = varlen_attention_forward(
        torch.nn.Module(), q, k, v, None, cu_seq_lens_q=cu.long(), cu_seq_lens_k=cu.long(),
        max_length_q=torch.tensor(3), max_length_k=torch.tensor(3),
    )
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_gqa_heads_must_divide():
    q, k, v = torch.randn(1, 3, 4, 4), torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    with pytest.raises(FormatKitValueError, match="3 query heads and 2 key/value heads"):
        varlen_attention_forward(torch.nn.Module(), q, k, v, None)


def test_bad_mask_type_raises():
    with pytest.raises(FormatKitTypeError, match="2-D padding mask"):
        varlen_attention_forward(torch.nn.Module(), *_qkv(), torch.ones(5, dtype=torch.bool))


def test_custom_4d_mask_goes_to_sdpa():
    q, k, v = _qkv()
    mask = torch.ones(1, 1, 5, 5, dtype=torch.bool).tril()
    mask[..., 3:, :3] = False  # two sequences, 3 + 2
    out, _ = varlen_attention_forward(torch.nn.Module(), q, k, v, mask)
    cu = torch.tensor([0, 3, 5], dtype=torch.int32)
    expected, _ = varlen_attention_forward(torch.nn.Module(), q, k, v, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_sliding_window_without_kernel_support_raises():
    kernel = K.Kernel(lambda *a, **k: None, frozenset({"query", "key", "value", "is_causal"}))
    q = torch.randn(10, 2, 4)
    seg = Segments(torch.tensor([0, 10]), torch.tensor([0, 10]), 10, 10, None, None)
    with pytest.raises(FormatKitValueError, match=r"sliding window of 4 tokens .* Upgrade torch"):
        K.run_kernel(kernel, q, q, q, seg, K.Spec(None, True, 4))


def test_kernel_arguments_adapt_to_the_torch_version():
    """torch 2.10 takes is_causal, later ones window_size/scale/enable_gqa: each is used where present."""
    calls = []

    def fake(q, k, v, cu_q, cu_k, max_q, max_k, **kw):
        calls.append((q, k, kw))
        return q

    seg = Segments(torch.tensor([0, 3]), torch.tensor([0, 3]), 3, 3, None, None)
    q, k = torch.ones(3, 4, 2), torch.ones(3, 2, 2)
    new = K.Kernel(fake, frozenset({"scale", "window_size", "enable_gqa"}))
    K.run_kernel(new, q, k, k, seg, K.Spec(0.5, True, None))
    assert calls[-1][2] == {"enable_gqa": True, "scale": 0.5, "window_size": (-1, 0)}
    K.run_kernel(new, q, k, k, seg, K.Spec(None, True, 8))
    assert calls[-1][2]["window_size"] == (7, 0)
    old = K.Kernel(fake, frozenset({"is_causal"}))
    K.run_kernel(old, q, k, k, seg, K.Spec(0.5, True, None))
    q_seen, k_seen, kw = calls[-1]
    assert kw == {"is_causal": True}
    assert k_seen.shape == (3, 4, 2)  # key/value heads repeated
    torch.testing.assert_close(q_seen, q * 0.5 * 2**0.5)  # scale folded into the query


# ----------------------------------------------------------------------------------------------------------------
# registration
# ----------------------------------------------------------------------------------------------------------------
def test_packed_sequence_search_is_skipped_for_this_attention_only(monkeypatch):
    """transformers' search for packed sequences reads a device value on the host every forward pass (a sync):
    models on this attention skip it, others keep it, and the results do not change."""
    from transformers import masking_utils

    register()
    calls = []
    original = masking_utils.find_packed_sequence_indices
    monkeypatch.setattr(
        masking_utils, "find_packed_sequence_indices", lambda p: calls.append(1) or original(p)
    )
    batch = _flat(_sequences()) | {"use_cache": False}  # as in training (a cache turns the search off)
    model = _tiny("llama")
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        reference = model(**batch).logits
    assert calls, "transformers no longer searches position_ids for packed sequences: drop the skip"
    calls.clear()
    model.set_attn_implementation(register())
    with torch.no_grad():
        out = model(**batch).logits
        unpacked = model(**{k: v for k, v in batch.items() if not k.startswith(("cu_", "max_"))}).logits  # from positions
    assert not calls
    torch.testing.assert_close(out, reference, atol=2e-5, rtol=2e-5)
    torch.testing.assert_close(unpacked, reference, atol=2e-5, rtol=2e-5)


def test_packed_sequence_skip_reads_positional_and_keyword_arguments():
    from trl_formatkit.attention.registry import _REGISTERED, _without_packed_detection

    register()
    seen = []

    def original(config, inputs_embeds, attention_mask, past_key_values, position_ids=None, layer_idx=None):
        seen.append(position_ids)

    wrapped = _without_packed_detection(original)
    ours, other = (type("C", (), {"_attn_implementation": n})() for n in (next(iter(_REGISTERED)), "sdpa"))
    pos = torch.arange(3)[None]
    wrapped(ours, None, None, None, pos)
    wrapped(ours, None, None, None, position_ids=pos)
    wrapped(other, None, None, None, pos)
    wrapped(ours, None, torch.ones(1, 3), None, pos)  # a padding mask: transformers' path unchanged
    assert [p is None for p in seen] == [True, True, False, False]
    assert _without_packed_detection(lambda x: x) is None  # another signature: left alone


def test_register_is_idempotent_and_returns_the_name():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    assert register() == DEFAULT_NAME
    assert register() == DEFAULT_NAME
    assert register("formatkit_other") == "formatkit_other"
    assert AttentionInterface()["formatkit_other"] is varlen_attention_forward
    assert AttentionMaskInterface()["formatkit_other"] is varlen_attention_mask


def test_register_refuses_builtin_names_and_foreign_functions():
    from transformers import AttentionInterface

    with pytest.raises(FormatKitValueError, match="'sdpa' is one of transformers' own"):
        register("sdpa")
    with pytest.raises(FormatKitValueError, match="non-empty name"):
        register(" ")
    with pytest.raises(FormatKitTypeError, match="takes a string"):
        register(3)

    def other(*args, **kwargs):
        raise AssertionError("not called")

    AttentionInterface.register("formatkit_taken", other)
    try:
        with pytest.raises(FormatKitValueError, match="already registered .*replace=True"):
            register("formatkit_taken")
        assert register("formatkit_taken", replace=True) == "formatkit_taken"
        assert AttentionInterface()["formatkit_taken"] is varlen_attention_forward
    finally:
        AttentionInterface._global_mapping.pop("formatkit_taken", None)


def test_from_pretrained_with_the_name(name, tmp_path):
    from transformers import AutoModelForCausalLM

    model = _tiny("qwen2")
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=name)
    assert loaded.config._attn_implementation == name
    loaded.eval()
    seqs = _sequences()
    padded, flat = _padded(seqs), _flat(seqs)
    with torch.no_grad():
        got = loaded(**flat).logits[0]
        model.set_attn_implementation("sdpa")
        expected = _real_logits(model(**padded).logits, padded, LENGTHS)
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=RTOL)
    # set_attn_implementation returns to it too
    loaded.set_attn_implementation("sdpa")
    loaded.set_attn_implementation(name)
    assert loaded.config._attn_implementation == name


def test_with_the_collator(name, load_tokenizer):
    """The collator's padding-free output feeds the model as is and matches its padded output under sdpa."""
    from trl_formatkit.collators import DataCollatorForCompletionOnlyLM

    tok = load_tokenizer("phi-3-mini")
    texts = [
        [{"role": "user", "content": "The birch canoe slid on the smooth planks."},
         {"role": "assistant", "content": "On the smooth planks, the birch canoe slid. Yes, hrrrm."}],
        [{"role": "user", "content": "Glue the sheet to the dark blue background."},
         {"role": "assistant", "content": "Glue the sheet to the dark blue background, you must."}],
    ]
    rows = [tok.apply_chat_template(t, tokenize=True, return_dict=False) for t in texts]
    rows = [r["input_ids"] if isinstance(r, dict) else r for r in rows]
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32064, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2))
    padded = DataCollatorForCompletionOnlyLM("<|assistant|>", tokenizer=tok)(rows)
    flat = DataCollatorForCompletionOnlyLM("<|assistant|>", tokenizer=tok, padding_free=True)(rows)
    loss_p, logits_p, grads_p, _ = _forward_backward(model, "sdpa", padded)
    loss_f, logits_f, grads_f, _ = _forward_backward(model, name, {k: v for k, v in flat.items() if k != "seq_idx"})
    torch.testing.assert_close(loss_f, loss_p, atol=ATOL, rtol=RTOL)
    torch.testing.assert_close(logits_f[0], logits_p[padded["attention_mask"].bool()], atol=ATOL, rtol=RTOL)
    for key in grads_p:
        torch.testing.assert_close(grads_f[key], grads_p[key], atol=ATOL, rtol=RTOL, msg=key)


def test_import_does_not_pull_trl_or_datasets():
    code = (
        "import json, sys\n"
        "import trl_formatkit.attention as a\n"
        "before = sorted(m for m in sys.modules if m.split('.')[0] in ('trl', 'datasets', 'transformers'))\n"
        "a.register()\n"
        "after = sorted(m for m in sys.modules if m.split('.')[0] in ('trl', 'datasets'))\n"
        "print(json.dumps({'before': before, 'after': after}))\n"
    )
    out = run_python_json(code)
    assert out == {"before": [], "after": []}, out


# ----------------------------------------------------------------------------------------------------------------
# CUDA: the kernel itself (skipped where there is no GPU)
# ----------------------------------------------------------------------------------------------------------------
cuda = pytest.mark.skipif(not varlen_kernel_available(), reason="needs torch>=2.10 and an Ampere+ CUDA GPU")


@cuda
@pytest.mark.parametrize("kv_heads, window", [(8, None), (2, None), (2, 40)])
def test_cuda_kernel_matches_reference_in_bf16(kv_heads, window):
    torch.manual_seed(0)
    lengths = [37, 1, 200, 64, 129]
    n = sum(lengths)
    q = torch.randn(1, 8, n, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, kv_heads, n, 64, device="cuda", dtype=torch.bfloat16)
    v = torch.randn(1, kv_heads, n, 64, device="cuda", dtype=torch.bfloat16)
    cu = torch.tensor([0, *np.cumsum(lengths).tolist()], dtype=torch.int32, device="cuda")
    kw = dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))
    out, _ = varlen_attention_forward(torch.nn.Module(), q, k, v, None, sliding_window=window, **kw)
    seg = Segments(cu, cu, max(lengths), max(lengths), None, None)
    ref = K.run_per_sequence(
        *(t.transpose(1, 2)[0].double() for t in (q, k, v)), seg, K.Spec(None, True, window)
    )
    err = (out[0].double() - ref).norm() / ref.norm()
    assert err < 1e-2, err


@cuda
@pytest.mark.parametrize("kv_heads, window, scaling", [(8, None, None), (2, None, 0.1), (2, 40, None)])
def test_cuda_direct_eager_path_equals_varlen_attn(monkeypatch, kv_heads, window, scaling):
    """The eager path calls the flash kernels without torch's custom ops: outputs and gradients bitwise equal."""
    torch.manual_seed(0)
    lengths = [37, 1, 200, 64, 129]
    cu = torch.tensor([0, *np.cumsum(lengths).tolist()], dtype=torch.int32, device="cuda")
    seg = Segments(cu, cu, max(lengths), max(lengths), None, None)
    spec = K.Spec(scaling, True, window)
    base = [torch.randn(sum(lengths), h, 64, device="cuda", dtype=torch.bfloat16) for h in (8, kv_heads, kv_heads)]
    grad = torch.randn(sum(lengths), 8, 64, device="cuda", dtype=torch.bfloat16)
    results = []
    for direct in (True, False):
        monkeypatch.setattr(K, "EAGER_DIRECT", direct)
        q, k, v = (t.clone().requires_grad_() for t in base)
        out = K.run_kernel(K.kernel(), q, k, v, seg, spec)
        out.backward(grad)
        results.append([out, q.grad, k.grad, v.grad])
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@cuda
def test_cuda_float32_falls_back_with_a_warning():
    F._WARNED.clear()
    q = torch.randn(1, 2, 6, 8, device="cuda")
    cu = torch.tensor([0, 2, 6], dtype=torch.int32, device="cuda")
    with pytest.warns(FormatKitWarning, match="falls back"):
        out, _ = varlen_attention_forward(torch.nn.Module(), q, q, q, None, cu_seq_lens_q=cu, cu_seq_lens_k=cu)
    assert out.dtype == torch.float32


# ----------------------------------------------------------------------------------------------------------------
# issue 9 item 2: a 0 inside a row's attention_mask is not a sequence boundary
# ----------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "mistral"])
@pytest.mark.parametrize("positions", ["default", "arange", "from_mask"])
def test_hole_in_attention_mask_attends_like_eager(family, positions, name):
    """A padded row whose mask has a 0 in the middle: the tokens after the hole still see those before it."""
    model = _tiny(family)
    seqs = _sequences((9, 12, 6))
    batch = _padded(seqs, side="right")
    batch["attention_mask"][0, 3:5] = 0  # a hole in the first row, left and right neighbours real
    batch["attention_mask"][1, 7] = 0  # a one-token hole in the second
    batch["labels"][batch["attention_mask"] == 0] = -100
    if positions == "arange":
        batch["position_ids"] = torch.arange(batch["input_ids"].shape[1])[None].expand(3, -1)
    elif positions == "from_mask":  # what a collator computing positions over real tokens gives
        batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
    real = batch["attention_mask"].bool()
    _, logits_e, grads_e, _ = _forward_backward(model, "eager", batch)
    _, logits_v, grads_v, _ = _forward_backward(model, name, batch)
    torch.testing.assert_close(logits_v[real], logits_e[real], atol=ATOL, rtol=RTOL)
    for key in grads_e:
        torch.testing.assert_close(grads_v[key], grads_e[key], atol=ATOL, rtol=RTOL, msg=key)


# ----------------------------------------------------------------------------------------------------------------
# issue 12: no device-to-host copy on the collator-metadata path
# ----------------------------------------------------------------------------------------------------------------
_HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")


@pytest.fixture
def host_reads_refused(monkeypatch):
    """Register a spy of the attention that refuses every read of a tensor's value on the host while it runs."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    inside = []

    def refuse(method):
        original = getattr(torch.Tensor, method)

        def guarded(self, *args, **kwargs):
            if inside:
                raise AssertionError(f"Tensor.{method}() inside the padding-free attention")
            return original(self, *args, **kwargs)

        return guarded

    def spy(*args, **kwargs):
        inside.append(1)
        try:
            return varlen_attention_forward(*args, **kwargs)
        finally:
            inside.pop()

    for method in _HOST_READS:
        monkeypatch.setattr(torch.Tensor, method, refuse(method))
    AttentionInterface.register("formatkit_spy", spy)
    AttentionMaskInterface.register("formatkit_spy", varlen_attention_mask)
    return "formatkit_spy"


def test_collator_metadata_path_reads_nothing_back_from_the_device(host_reads_refused):
    model = _tiny("llama")
    model.train()
    batch = _flat(_sequences())  # cu_seq_lens as tensors, max_length as ints: what both collators give
    loss, logits, _, _ = _forward_backward(model, host_reads_refused, batch)
    _, expected, _, _ = _forward_backward(model, "sdpa", _padded(_sequences()))
    torch.testing.assert_close(logits[0], _real_logits(expected, _padded(_sequences()), LENGTHS), atol=ATOL, rtol=RTOL)


def test_the_host_read_guard_can_fail(host_reads_refused):
    """max_length as a tensor must be read back: the guard of the test above sees it."""
    batch = _flat(_sequences())
    batch["max_length_q"] = batch["max_length_k"] = torch.tensor(max(LENGTHS))
    with pytest.raises(AssertionError, match=r"Tensor\.__int__\(\) inside"):
        _forward_backward(_tiny("llama"), host_reads_refused, batch)


def test_collators_put_python_ints_in_max_length(load_tokenizer):
    """The no-copy path needs max_length_q/k as ints: ours and trl's collators give ints."""
    DataCollatorForLanguageModeling = pytest.importorskip("trl.trainer.sft_trainer").DataCollatorForLanguageModeling

    from trl_formatkit import DataCollatorForCompletionOnlyLM

    tok = load_tokenizer("phi-3-mini")
    rows = [tok(f"<|user|>{t}<|end|><|assistant|>{t * 2}<|end|>")["input_ids"] for t in ("hi", "a question")]
    ours = DataCollatorForCompletionOnlyLM("<|assistant|>", tokenizer=tok, padding_free=True)(rows)
    theirs = DataCollatorForLanguageModeling(pad_token_id=tok.pad_token_id, padding_free=True)(
        [{"input_ids": r} for r in rows]
    )
    for batch in (ours, theirs):
        assert type(batch["max_length_q"]) is int and type(batch["max_length_k"]) is int, batch["max_length_q"]
        assert isinstance(batch["cu_seq_lens_q"], torch.Tensor)


@pytest.mark.parametrize("cu, match", [([0, 3, 4], "does not describe"), ([0, 5, 5], "max_length_q/k = 3/3")])
def test_bad_metadata_is_still_caught_without_a_host_read(cu, match):
    """The device-side assertion explains itself on the CPU (on a GPU it stops with a device-side assert)."""
    cu = torch.tensor(cu, dtype=torch.int32)
    with pytest.raises(FormatKitValueError, match=match):
        varlen_attention_forward(
            torch.nn.Module(), *_qkv(), None, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=3, max_length_k=3
        )


def _cuda_flat(lengths, heads=8, kv_heads=2, dim=64):
    n = sum(lengths)
    q = torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    k = torch.randn(1, kv_heads, n, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    v = torch.randn(1, kv_heads, n, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    cu = torch.tensor([0, *np.cumsum(lengths).tolist()], dtype=torch.int32, device="cuda")
    return (q, k, v), dict(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(lengths), max_length_k=max(lengths))


def _sync_debug(mode: str) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "a prototype feature" notice
        torch.cuda.set_sync_debug_mode(mode)


@cuda
def test_cuda_forward_and_backward_never_wait_for_the_gpu():
    """issue 12: with the collator's metadata, no device-to-host synchronisation in forward or backward."""
    (q, k, v), kw = _cuda_flat([37, 1, 200, 64])
    varlen_attention_forward(torch.nn.Module(), q, k, v, None, **kw)[0].sum().backward()  # warm-up
    torch.cuda.synchronize()
    try:
        _sync_debug("error")
        for window in (None, 40):
            out, _ = varlen_attention_forward(torch.nn.Module(), q, k, v, None, sliding_window=window, **kw)
            out.float().square().sum().backward()
    finally:
        _sync_debug("default")
    torch.cuda.synchronize()
    assert q.grad is not None and torch.isfinite(q.grad).all()


@cuda
def test_cuda_model_step_never_waits_for_the_gpu():
    """A whole forward + backward of a bf16 model on a flattened batch with the collator's metadata: no
    synchronisation at all (transformers' packed-sequence search, which has one, is skipped for this attention)."""
    import warnings

    model = _tiny("llama").cuda().to(torch.bfloat16)
    model.train()
    model.set_attn_implementation(register())
    batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in _flat(_sequences()).items()}
    batch["use_cache"] = False  # as in training: with a cache transformers skips its packed-sequence search
    model(**batch).loss.backward()  # warm-up
    torch.cuda.synchronize()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            model(**batch).loss.backward()
    finally:
        _sync_debug("default")
    syncs = [f"{w.filename}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)]
    assert not syncs, syncs
