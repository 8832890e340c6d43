"""The model side: grow the embeddings when the tokenizer outgrew them, sync token ids, train the new rows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import FormatKitTypeError, FormatKitValueError
from .probe import end_of_turn_id
from .vocab import recorded_new_ids, require_tokenizer

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["resize_embeddings", "new_token_lora_kwargs"]


def input_embeddings(model: Any) -> torch.nn.Module:
    getter = getattr(model, "get_input_embeddings", None)
    embedding = None
    if callable(getter):
        try:
            embedding = getter()
        except (NotImplementedError, AttributeError):
            embedding = None
    if embedding is None or not hasattr(embedding, "weight"):
        raise FormatKitTypeError(
            f"model {type(model).__name__} has no input embeddings (get_input_embeddings() gave "
            f"{type(embedding).__name__ if embedding is not None else 'nothing'}); pass a transformers model such as "
            "AutoModelForCausalLM.from_pretrained(...), or its PEFT wrapper"
        )
    return embedding


def num_rows(module: Any) -> int:
    rows = getattr(module, "num_embeddings", None) or getattr(module, "out_features", None)
    return int(rows if rows is not None else module.weight.shape[0])


def _is_quantized(module: Any) -> bool:
    weight = getattr(module, "weight", None)
    names = {type(module).__name__, type(weight).__name__}
    return bool(names & {"Params4bit", "Int8Params", "Linear4bit", "Linear8bitLt", "Embedding4bit", "Embedding8bit"})


def check_resizable(model: Any) -> tuple[Any, Any]:
    embedding = input_embeddings(model)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for role, module in (("input embedding", embedding), ("output embedding (lm_head)", output)):
        if module is None:
            continue
        if type(module).__module__.startswith("peft"):
            raise FormatKitTypeError(
                f"the model's {role} is wrapped by PEFT ({type(module).__name__}: modules_to_save or "
                "trainable_token_indices), which cannot be resized in place; resize the base model first, then call "
                "get_peft_model(model, LoraConfig(..., **new_token_lora_kwargs(model, new_ids)))"
            )
        if _is_quantized(module):
            raise FormatKitTypeError(
                f"the model's {role} is quantised ({type(module).__name__}), so its rows cannot be added; load "
                "with BitsAndBytesConfig(..., llm_int8_skip_modules=['lm_head']) (transformers keeps embeddings "
                "unquantised by default) or resize before quantising"
            )
    return embedding, output


def eos_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]


def model_configs(model: Any) -> list[Any]:
    found = []
    config = getattr(model, "config", None)
    if config is not None:
        found.append(config)
        get_text = getattr(config, "get_text_config", None)
        text_config = get_text() if callable(get_text) else None
        if text_config is not None and text_config is not config:
            found.append(text_config)
    return found


def _merged_eos(old: Any, eos_id: int | None, *, pad_id: int | None, end_of_turn_id: int | None) -> Any:
    if eos_id is None:
        return old
    extra = [i for i in eos_list(old) if i not in (eos_id, pad_id)]
    if end_of_turn_id is not None and end_of_turn_id not in (eos_id, pad_id) and end_of_turn_id not in extra:
        extra.append(end_of_turn_id)
    return [eos_id, *extra] if extra else eos_id


def _sync_token_ids(model: Any, tokenizer: Any) -> None:
    """Make ``config`` and ``generation_config`` use the tokenizer's PAD/BOS/EOS (and the template's end-of-turn)."""
    pad_id, bos_id, eos_id = tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id
    end_of_turn = end_of_turn_id(tokenizer)
    for config in model_configs(model):
        config.pad_token_id = pad_id
        config.bos_token_id = bos_id
        if eos_id is not None:
            # config.eos_token_id: the tokenizer's EOS (a list there only where it already was one)
            old = getattr(config, "eos_token_id", None)
            config.eos_token_id = (
                _merged_eos(old, eos_id, pad_id=pad_id, end_of_turn_id=None) if isinstance(old, list) else eos_id
            )
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        generation_config.pad_token_id = pad_id
        generation_config.bos_token_id = bos_id
        generation_config.eos_token_id = _merged_eos(
            generation_config.eos_token_id, eos_id, pad_id=pad_id, end_of_turn_id=end_of_turn
        )


def resize_embeddings(
    model: Any, tokenizer: Any, *, pad_to_multiple_of: int | None = None, mean_resizing: bool = True
) -> list[int]:
    """Grow the embeddings only if the tokenizer outgrew them, and sync the model's token ids: ``modify_model``.

    - Resizes only when ``len(tokenizer)`` exceeds the embedding rows; never shrinks (empty slots stay).
    - The new size is a multiple of ``pad_to_multiple_of``, by default the largest power of two dividing the
      current size (32000 rows -> multiples of 256: a 32011-token tokenizer gives 32256 rows).
    - New rows are drawn around the mean of the old ones (transformers' ``mean_resizing``), so new tokens start
      as "an average token", not noise.
    - ``config`` and ``generation_config`` get the tokenizer's PAD, BOS and EOS; ``generation_config`` keeps its
      other EOS ids (minus the PAD) and gains the chat template's end-of-turn token.
    - Works through PEFT wrappers and on 4-bit/8-bit (bitsandbytes) models, whose embeddings are not quantised.

    Args:
        model: a transformers model, PEFT-wrapped or quantised.
        tokenizer: its (fixed) tokenizer.
        pad_to_multiple_of: the multiple to round the new size up to (default: see above).
        mean_resizing: initialise new rows from the old rows' mean and covariance (else transformers' default).

    Returns:
        Sorted ids whose embedding rows are new and untrained: the rows this call added that the tokenizer uses,
        plus tokens :func:`fix_special_tokens` / :func:`setup_chat_format` added into empty slots (remembered in
        the tokenizer's ``save_pretrained`` folder too, so a reloaded tokenizer gives the same answer). Pass them to
        :func:`new_token_lora_kwargs`.

    Raises:
        FormatKitTypeError: the model has no input embeddings, or they are quantised or wrapped by PEFT's
            ``modules_to_save`` / ``trainable_token_indices``.
        FormatKitValueError: ``pad_to_multiple_of`` is not a positive integer.

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> from trl_formatkit._toy import toy_tokenizer
        >>> from trl_formatkit.special_tokens import fix_special_tokens
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=24, hidden_size=8, intermediate_size=16,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        >>> tok = fix_special_tokens(toy_tokenizer(bos_token="</s>", pad_token="</s>", unk_token=None))
        >>> resize_embeddings(model, tok), model.get_input_embeddings().num_embeddings  # '<pad>' fits an empty slot
        ([21], 24)
        >>> tok = fix_special_tokens(tok, extra_special_tokens=["<tool>", "</tool>", "<call>"])   # 25 tokens now
        >>> resize_embeddings(model, tok), model.get_input_embeddings().num_embeddings  # 24 = 8 * 3 -> 32
        ([21, 22, 23, 24], 32)
        >>> model.config.pad_token_id == tok.pad_token_id != tok.eos_token_id
        True
    """
    require_tokenizer(tokenizer)
    if pad_to_multiple_of is not None and (
        isinstance(pad_to_multiple_of, bool) or not isinstance(pad_to_multiple_of, int) or pad_to_multiple_of < 1
    ):
        raise FormatKitValueError(f"pad_to_multiple_of must be a positive int or None, got {pad_to_multiple_of!r}")
    embedding, _ = check_resizable(model)
    old_rows = num_rows(embedding)
    size = len(tokenizer)
    if size > old_rows:
        multiple = pad_to_multiple_of or (old_rows & -old_rows)
        model.resize_token_embeddings(size, pad_to_multiple_of=multiple, mean_resizing=mean_resizing)
    _sync_token_ids(model, tokenizer)
    recorded = {i for i in recorded_new_ids(tokenizer) if i < size}
    return sorted(set(range(old_rows, size)) | recorded)


def new_token_lora_kwargs(model: Any, token_ids: Iterable[int]) -> dict[str, Any]:
    """The ``LoraConfig`` arguments that train the embedding rows of new tokens (LoRA alone never does).

    With peft >= 0.15, ``trainable_token_indices`` trains just those rows of the input embedding and, where the
    output layer is not tied to it, of ``lm_head`` too (a few KB instead of the whole matrix). Where that cannot
    work (older peft, a layer that is not ``nn.Embedding`` / ``nn.Linear``, a quantised ``lm_head``), it falls back
    to ``modules_to_save`` with the embedding (and ``lm_head``), which trains and saves them whole.

    Args:
        model: the model, after :func:`resize_embeddings` (plain, not yet wrapped by ``get_peft_model``).
        token_ids: the new ids, e.g. what :func:`resize_embeddings` returned.

    Returns:
        A dict to unpack into ``LoraConfig(...)``; empty when there are no new ids.

    Raises:
        FormatKitTypeError: the model has no input embeddings.
        FormatKitValueError: an id is negative or past the embedding rows (resize first).
        ImportError: peft is not installed (``pip install 'trl-formatkit[peft]'``).

    Example:
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=8, intermediate_size=16,
        ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False))
        >>> new_token_lora_kwargs(model, [30, 31])
        {'trainable_token_indices': {'embed_tokens': [30, 31], 'lm_head': [30, 31]}}
    """
    ids = sorted({int(i) for i in token_ids})
    if not ids:
        return {}
    try:
        import peft
    except ImportError as error:  # pragma: no cover - peft is installed in development
        raise ImportError(
            "new_token_lora_kwargs needs peft: pip install 'trl-formatkit[peft]' (or 'trl-formatkit[qlora]')"
        ) from error
    import dataclasses

    import torch

    embedding = input_embeddings(model)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    rows = num_rows(embedding)
    bad = [i for i in ids if i < 0 or i >= rows]
    if bad:
        raise FormatKitValueError(
            f"token ids {bad[:5]} lie outside the embedding matrix (0..{rows - 1}); call "
            "resize_embeddings(model, tokenizer) first and pass the ids it returns"
        )
    names = {id(m): n for n, m in model.named_modules()}
    embedding_name = names.get(id(embedding), "embed_tokens").rsplit(".", 1)[-1]
    tied = output is not None and getattr(output, "weight", None) is getattr(embedding, "weight", None)
    output_name = None if output is None or tied else names.get(id(output), "lm_head").rsplit(".", 1)[-1]
    supports = "trainable_token_indices" in {f.name for f in dataclasses.fields(peft.LoraConfig)}
    simple = isinstance(embedding, torch.nn.Embedding) and (
        output_name is None or (isinstance(output, torch.nn.Linear) and not _is_quantized(output))
    )
    if supports and simple:
        targets = {embedding_name: ids}
        if output_name is not None:
            targets[output_name] = ids
        return {"trainable_token_indices": targets}
    return {"modules_to_save": [embedding_name] + ([output_name] if output_name else [])}
