"""``trl_formatkit.SFTTrainer``: trl's ``SFTTrainer`` with formats, completion-only labels and checks joined in.

What it adds to ``trl.SFTTrainer`` (every trl argument works as before):

1. **Formats.** A dataset in any registered format (alpaca, sharegpt, plugins' formats) becomes ``messages``
   before trl looks at it; ``messages``, ``prompt``/``completion`` and text rows are trl's own and stay.
2. **Labels at preparation time**, in a ``labels`` column that trl carries through truncation, every packing
   strategy and padding-free batches:

   - with a template (``response_template=...``, or a ``DataCollatorForCompletionOnlyLM`` passed as
     ``data_collator``): the collator's masking engine runs on the tokenized rows;
   - on ``messages`` without a template: the conversation's structure (the chat template is rendered and
     each message mapped to its tokens, so ``<|assistant|>`` typed inside a message trains nothing);
   - on text rows without a template: the chat template's markers (:func:`~trl_formatkit.structure.
     find_template_markers`) when the rows contain them, else trl's full-sequence loss;
   - ``prompt``/``completion`` rows: trl's own completion mask.
3. **The whole-dataset check**: rows that train nothing (after truncation to ``max_length``) are dropped and
   counted in one log line; when they are more than half of the rows, training does not start and the error
   shows a decoded row and the fix. A wrong template never ends in a silent ``train_loss: 0.0``.
4. **The tokenizer audit**: PAD == EOS (or no PAD) and BOS/UNK == EOS are fixed with
   :func:`~trl_formatkit.fix_special_tokens` (logged; ``fix_tokenizer=False`` turns it off), the embeddings
   grow where the tokenizer outgrew them, new tokens are made trainable under LoRA, and a row that starts with
   BOS twice (a rendered template's BOS plus the tokenizer's) loses one.

Note: since transformers 5.13 a tokenizer may carry its own ``response_template`` attribute, used to parse
generated responses. The trainer's ``response_template`` argument is unrelated: it is the collator's, the text
(or ids) that starts an assistant answer in the training rows.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from typing import Any

import trl

from .collators import DataCollatorForCompletionOnlyLM
from .distributed import join_job, prepared_main_process_first
from .errors import FormatKitValueError, warn
from .masking import TemplateSpec
from .prepare import (
    LabelPlan,
    StructureLabeller,
    TemplateLabeller,
    Truncator,
    check_trained,
    convert_format,
)

REGIONAL_ENV = "ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION"
logger = logging.getLogger("trl_formatkit.sft")
_TEMPLATE_ARGS = ("response_template", "instruction_template", "end_template")
_FIXABLE = {"pad-missing", "pad-equals-eos", "bos-equals-eos", "unk-equals-eos"}


class SFTTrainer(trl.SFTTrainer):
    """trl's ``SFTTrainer`` plus formats, completion-only labels at preparation time, and the checks.

    Args:
        model, args, data_collator, train_dataset, eval_dataset, processing_class, **kwargs: as
            ``trl.SFTTrainer``. A :class:`~trl_formatkit.DataCollatorForCompletionOnlyLM` passed as
            ``data_collator`` is accepted with ``padding_free=True`` and with ``packing=True``: its templates,
            ``padding_free``, ``pad_to_multiple_of`` and ``on_missing`` win (logged); its labels are computed at
            preparation and trl's collator pads or flattens them.
        response_template: text or token ids (or a list of several) that start an assistant answer; labels then
            come from templates on any data. Not the tokenizer's own ``response_template`` attribute
            (transformers >= 5.13, for parsing responses).
        instruction_template: text or ids (or several) that start a turn not to train (user, system, tool).
        end_template: text or ids (or several) that end an answer (trained, inclusive), e.g. ``"<|end|>"``.
        dataset_format: ``"auto"`` (detect the format and convert it to ``messages``), a format name, or None
            (leave the dataset as trl would see it).
        train_roles: on ``messages`` data, the roles whose messages are trained.
        train_end_of_turn: train the end-of-turn marker (and EOS) the template writes after a trained message.
        last_turn_only: train only the last trained message of each conversation.
        fix_tokenizer: fix PAD == EOS / missing PAD / BOS or UNK == EOS before training (logged).

    Raises:
        FormatKitValueError: templates given twice and different; most rows train nothing (see the module).

    Example:
        >>> trainer = SFTTrainer(model=model, args=SFTConfig(...), train_dataset=alpaca_rows,  # doctest: +SKIP
        ...                      processing_class=tokenizer, response_template="<|assistant|>")
    """

    def __init__(
        self,
        model: Any,
        args: Any = None,
        data_collator: Any = None,
        train_dataset: Any = None,
        eval_dataset: Any = None,
        processing_class: Any = None,
        *,
        response_template: TemplateSpec | None = None,
        instruction_template: TemplateSpec | None = None,
        end_template: TemplateSpec | None = None,
        dataset_format: str | None = "auto",
        train_roles: Sequence[str] = ("assistant",),
        train_end_of_turn: bool = True,
        last_turn_only: bool = False,
        fix_tokenizer: bool = True,
        **kwargs: Any,
    ) -> None:
        args = _as_sft_config(model, args)
        join_job(args)  # several processes: join the group; warnings and audit findings said once, by rank 0
        if isinstance(train_roles, str):
            train_roles = (train_roles,)
        self._formatkit = {
            "templates": dict(zip(_TEMPLATE_ARGS, (response_template, instruction_template, end_template),
                                  strict=True)),
            "dataset_format": dataset_format,
            "train_roles": tuple(train_roles),
            "train_end_of_turn": train_end_of_turn,
            "last_turn_only": last_turn_only,
            "collator": None,
            "wrapped": False,
        }
        if isinstance(data_collator, DataCollatorForCompletionOnlyLM):
            self._adopt_collator(data_collator)
            data_collator = None  # trl refuses a custom collator with padding-free; trl's carries our labels
        if isinstance(model, str) and fix_tokenizer:  # loaded here so that the fix can resize its embeddings
            model, processing_class = self._load_by_name(model, args, processing_class, kwargs)
        if processing_class is not None and fix_tokenizer:
            self._audit(processing_class, model, kwargs.get("peft_config"))
        num_proc = getattr(args, "dataset_num_proc", None)
        if train_dataset is not None and kwargs.get("formatting_func") is None:
            train_dataset = self._convert(train_dataset, args, num_proc)
        if eval_dataset is not None and kwargs.get("formatting_func") is None:
            eval_dataset = self._convert(eval_dataset, args, num_proc)
        super().__init__(model, args, data_collator, train_dataset, eval_dataset, processing_class, **kwargs)
        self._configure_collator()
        if self._formatkit["wrapped"]:
            warn(
                "packing_strategy='wrapped' cuts and joins rows without boundaries (no seq_lengths): the packed "
                "sequences attend to each other and a row's start is predicted from the previous row. Use "
                "packing_strategy='bfd' (the default) or 'bfd_split' to keep them apart"
            )

    # -- construction ------------------------------------------------------------------------------------------
    def _adopt_collator(self, collator: DataCollatorForCompletionOnlyLM) -> None:
        given = self._formatkit["templates"]
        ours = {name: getattr(collator, name) for name in _TEMPLATE_ARGS}
        clash = [n for n in _TEMPLATE_ARGS if given[n] is not None and given[n] != ours[n]]
        if clash:
            raise FormatKitValueError(
                f"{clash[0]} is given twice: {given[clash[0]]!r} to the trainer and {ours[clash[0]]!r} in the "
                "data_collator; give it in one place"
            )
        self._formatkit["templates"] = ours
        self._formatkit["collator"] = collator
        logger.info(
            "trl_formatkit: using the data collator's settings: templates %s, padding_free=%s, "
            "pad_to_multiple_of=%s, on_missing=%r; its labels are computed while the dataset is prepared",
            {k: v for k, v in ours.items() if v is not None}, collator.padding_free, collator.pad_to_multiple_of,
            collator.on_missing,
        )

    @staticmethod
    def _load_by_name(name: str, args: Any, processing_class: Any, kwargs: dict) -> tuple[Any, Any]:
        """The model (and tokenizer) trl would load from ``name``: same function, same arguments, same order.

        trl loads a model given by name after the tokenizer fix, too late to resize its embeddings for new tokens
        (``<pad>`` of GPT-2: an ``IndexError`` at the first padded batch), and without ``processing_class`` the
        audit had nothing to check. ``quantization_config`` and ``args.model_init_kwargs`` are used here, as trl
        uses them, and not passed on.
        """
        from transformers import AutoProcessor

        try:
            from trl.trainer.utils import create_model_from_path
        except ImportError:  # an older trl: it loads the model itself (no resize for new tokens)
            return name, processing_class
        init = dict(args.model_init_kwargs or {})
        quantization = kwargs.pop("quantization_config", None)
        if quantization is not None:
            if "quantization_config" in init:
                raise FormatKitValueError(
                    "quantization_config is given both to the trainer and in args.model_init_kwargs; give it in one "
                    "place (the trainer argument)"
                )
            init["quantization_config"] = quantization
        if args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
            init["device_map"] = None  # as trl: "auto" fails in distributed training
        init.setdefault("trust_remote_code", args.trust_remote_code)
        model = create_model_from_path(name, **init)
        args.model_init_kwargs = None  # used: trl would warn that they are ignored
        if processing_class is None:
            processing_class = AutoProcessor.from_pretrained(
                name, revision=init.get("revision"), trust_remote_code=args.trust_remote_code
            )
        return model, processing_class

    def _audit(self, tokenizer: Any, model: Any, peft_config: Any) -> None:
        from .special_tokens import audit_tokenizer, fix_special_tokens

        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor's tokenizer
        codes = {f.code for f in audit_tokenizer(tokenizer).problems}
        if codes & _FIXABLE:
            before = {a: getattr(tokenizer, a) for a in ("pad_token", "bos_token", "unk_token")}
            fix_special_tokens(tokenizer)
            after = {a: getattr(tokenizer, a) for a in before}
            logger.warning(
                "trl_formatkit: fixed the tokenizer (%s): %s (fix_tokenizer=False keeps it as it was)",
                ", ".join(sorted(codes & _FIXABLE)),
                ", ".join(f"{a} {before[a]!r} -> {after[a]!r}" for a in before if before[a] != after[a]),
            )
        if not isinstance(model, str):  # a name: an older trl loads it later
            self._resize(tokenizer, model, peft_config)

    @staticmethod
    def _resize(tokenizer: Any, model: Any, peft_config: Any) -> None:
        from .special_tokens import resize_embeddings

        rows = model.get_input_embeddings().weight.shape[0]
        new_ids = resize_embeddings(model, tokenizer)
        if model.get_input_embeddings().weight.shape[0] != rows:
            logger.warning("trl_formatkit: resized the embeddings from %d to %d rows for the tokenizer's %d tokens",
                           rows, model.get_input_embeddings().weight.shape[0], len(tokenizer))
        if not new_ids or peft_config is None:
            return
        if getattr(peft_config, "trainable_token_indices", None) or getattr(peft_config, "modules_to_save", None):
            return  # the user chose what to train
        extra = _new_token_modules(model, new_ids)
        for key, value in extra.items():
            setattr(peft_config, key, value)
        logger.warning("trl_formatkit: the new token ids %s are trained through the LoRA config: %s", new_ids, extra)

    def _build_accelerator_args(self, **kwargs: Any) -> dict[str, Any]:
        """transformers' accelerator arguments; with ``torch_compile`` and flattened batches the model is compiled
        with dynamic sizes from the first step, one decoder layer for all.

        Flattened batches hold a new number of tokens every step. With torch's default the first step compiles a
        graph for its exact sizes and the second compiles the whole model again with dynamic sizes; ``dynamic=True``
        compiles once (a 0.48B model on an H100: about a minute less warm-up). Compiling the whole model unrolls
        every layer: a 1.5B model had not finished its first step after 585 s on an H100, where accelerate's
        regional compilation (each repeated block compiled alone, the compilation shared) warmed up in 20 s. An
        explicit choice is kept: ``dynamic`` set in the plugin, ``ACCELERATE_DYNAMO_USE_REGIONAL_COMPILATION`` set.
        """
        args = super()._build_accelerator_args(**kwargs)
        plugin = args.get("dynamo_plugin")
        if plugin is None or not self.args.torch_compile or not self._flat_batches():
            return args
        if getattr(plugin, "dynamic", False) is None:
            plugin.dynamic = True
            logger.info("trl_formatkit: torch_compile with flattened batches: compiling with dynamic=True")
        if hasattr(plugin, "use_regional_compilation") and REGIONAL_ENV not in os.environ:
            plugin.use_regional_compilation = True
            logger.info("trl_formatkit: torch_compile with flattened batches: regional compilation (set %s=false "
                        "to compile the whole model)", REGIONAL_ENV)
        return args

    def _flat_batches(self) -> bool:
        """Whether batches are flattened: trl's ``padding_free`` (once trl has set it) or the collator's."""
        collator = self._formatkit["collator"]
        return bool(getattr(self, "padding_free", False)) or (collator is not None and collator.padding_free)

    @prepared_main_process_first
    def _convert(self, dataset: Any, args: Any, num_proc: int | None) -> Any:
        if isinstance(dataset, dict):
            return {k: self._convert(v, args, num_proc) for k, v in dataset.items()}
        converted, _ = convert_format(
            dataset, self._formatkit["dataset_format"], text_field=args.dataset_text_field, num_proc=num_proc
        )
        return converted

    def _configure_collator(self) -> None:
        collator = self._formatkit["collator"]
        if collator is None:
            return
        if self._skip_prepare_dataset:  # no preparation, no labels column: the collator labels each batch
            self.data_collator = collator
            logger.warning("trl_formatkit: skip_prepare_dataset=True: the data collator computes the labels of "
                           "each batch (no whole-dataset check, no packing)")
            return
        trl_collator = self.data_collator
        flat = self._flat_batches()
        if self.padding_free and not collator.padding_free:
            logger.warning(
                "trl_formatkit: padding_free=True although the collator says False: packing_strategy=%r writes "
                "several sequences into one row, and only padding-free batches keep them apart",
                self.args.packing_strategy,
            )
        trl_collator.padding_free = flat
        trl_collator.pad_to_multiple_of = collator.pad_to_multiple_of
        self.padding_free = flat

    # -- dataset preparation -----------------------------------------------------------------------------------
    @prepared_main_process_first  # several processes: the main one prepares (and checks) first, once
    def _prepare_dataset(
        self,
        dataset: Any,
        processing_class: Any,
        args: Any,
        packing: bool,
        formatting_func: Any,
        dataset_name: str,
    ) -> Any:
        """trl's preparation with our labels and checks between tokenization and packing."""
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        if formatting_func is None:
            dataset = self._convert(dataset, args, getattr(args, "dataset_num_proc", None))
        columns = _columns(dataset)
        map_kwargs = _map_kwargs(dataset, args)
        structured = "messages" in columns and "input_ids" not in columns and formatting_func is None
        templates = self._templates(tokenizer, dataset, structured, args.dataset_text_field)
        if templates is None and structured:
            plan = LabelPlan("structure", train_roles=self._formatkit["train_roles"])
            labeller = StructureLabeller(tokenizer, self._formatkit["train_roles"],
                                         self._formatkit["train_end_of_turn"], self._formatkit["last_turn_only"])
            dataset = dataset.map(labeller, batched=True, remove_columns=columns,
                                  **_desc(map_kwargs, f"Labelling {dataset_name} rows from their structure"))
        else:
            # trl tokenizes (formatting_func, EOS, chat template, prompt/completion masks): no truncation, no packing
            bare = copy.copy(args)
            bare.max_length, bare.shuffle_dataset = None, False
            dataset = super()._prepare_dataset(dataset, processing_class, bare, False, formatting_func, dataset_name)
            dataset = dataset.select_columns(["input_ids", "labels"])
            plan = LabelPlan("trl")
            if templates is not None:
                plan, labeller = self._template_labeller(tokenizer, templates)
                dataset = dataset.map(labeller, batched=True,
                                      **_desc(map_kwargs, f"Labelling {dataset_name} rows from templates"))
        dataset = self._truncate_and_check(dataset, tokenizer, plan, args, packing, dataset_name, map_kwargs)
        if packing and args.packing_strategy == "wrapped":
            self._formatkit["wrapped"] = True  # said once, by __init__ (so the warning points at the user's line)
        final = args if packing else _without_truncation(args)
        return super()._prepare_dataset(dataset, processing_class, final, packing, None, dataset_name)

    def _templates(self, tokenizer: Any, dataset: Any, structured: bool, text_field: str) -> dict[str, Any] | None:
        """The templates to label with: given ones; on text rows, the chat template's markers if rows have them."""
        given = self._formatkit["templates"]
        if given["response_template"] is not None:
            return {**given, "markers_found": False}
        columns = _columns(dataset)
        if structured or ("input_ids" in columns and "labels" in columns):
            return None  # the conversation's structure; the user's own labels
        if "prompt" in columns and "completion" in columns:
            return None  # trl's completion mask
        try:
            from .structure import find_template_markers

            markers = find_template_markers(tokenizer)
        except Exception as error:  # noqa: BLE001 - no chat template: trl's full-sequence loss
            logger.info("trl_formatkit: no chat-template markers (%s); training on every token as trl does", error)
            return None
        sample = [row.get(text_field) for row in dataset.take(64)] if hasattr(dataset, "take") else []
        if not any(isinstance(t, str) and markers["response_template"] in t for t in sample):
            logger.info(
                "trl_formatkit: the rows do not contain the chat template's response marker %r; training on every "
                "token as trl does (pass response_template=... for completion-only labels)",
                markers["response_template"],
            )
            return None
        logger.warning("trl_formatkit: completion-only labels from the chat template's markers %s", markers)
        return {**markers, "markers_found": True}

    def _template_labeller(self, tokenizer: Any, templates: dict[str, Any]) -> tuple[LabelPlan, TemplateLabeller]:
        collator = self._formatkit["collator"] or DataCollatorForCompletionOnlyLM(
            templates["response_template"], templates["instruction_template"], tokenizer=tokenizer,
            end_template=templates["end_template"],
        )
        bos = getattr(tokenizer, "bos_token_id", None)
        labeller = TemplateLabeller(
            tuple(collator._response_variants), tuple(collator._instruction_variants),
            tuple(collator._end_variants), collator.on_missing, bos, tokenizer.decode,
        )
        plan = LabelPlan("template", templates["response_template"], tuple(collator._response_variants),
                         markers_found=templates["markers_found"])
        return plan, labeller

    def _truncate_and_check(
        self, dataset: Any, tokenizer: Any, plan: LabelPlan, args: Any, packing: bool, name: str, map_kwargs: dict
    ) -> Any:
        # bfd packing cuts a row longer than max_length to its start; the others keep every token
        if not packing:
            truncator = Truncator(args.max_length, args.truncation_mode)
        elif args.packing_strategy == "bfd":
            truncator = Truncator(args.max_length, "keep_start")
        else:
            truncator = Truncator(None)
        if not _is_map_style(dataset):
            keep = dataset.map(truncator, batched=True)
            logger.info("trl_formatkit: an IterableDataset is checked row by row as it streams; rows that train "
                        "nothing are skipped without a count")
            return keep.filter(lambda n: n > 0, input_columns="_formatkit_n_trained").remove_columns(
                ["_formatkit_n_trained", "_formatkit_n_full"])
        dataset = dataset.map(truncator, batched=True, **_desc(map_kwargs, f"Checking the {name} dataset's labels"))
        return check_trained(dataset, tokenizer, plan, name=name, max_length=truncator.max_length)


def _as_sft_config(model: Any, args: Any) -> Any:
    """trl's own defaulting (None -> ``SFTConfig("<model>-SFT")``, TrainingArguments -> SFTConfig), done early
    because the preparation reads the config."""
    if args is None:
        name = model if isinstance(model, str) else getattr(model.config, "_name_or_path", "") or "model"
        return trl.SFTConfig(f"{name.rstrip('/').split('/')[-1]}-SFT")
    if not isinstance(args, trl.SFTConfig):
        values = args.to_dict()
        values["hub_token"] = getattr(args, "hub_token", None)
        return trl.SFTConfig(**values)
    return args


def _new_token_modules(model: Any, new_ids: list[int]) -> dict[str, Any]:
    """LoRA settings that train the rows of new tokens under trl 1.16.

    :func:`~trl_formatkit.new_token_lora_kwargs` prefers peft's ``trainable_token_indices`` (a few rows, not the
    matrix), but trl 1.16's fused LM head reads ``lm_head.weight`` / ``lm_head.bias`` directly, which a
    ``TrainableTokensWrapper`` on the output layer (always there with tied embeddings) does not expose
    (``AttributeError``), and which would skip its trained rows. ``modules_to_save`` copies the whole matrices
    (and saves them with the adapter) but the fused head reads the trained copy; tied embeddings stay tied.
    """
    import dataclasses

    import peft

    from .special_tokens import new_token_lora_kwargs

    extra = new_token_lora_kwargs(model, new_ids)
    targets = extra.pop("trainable_token_indices", None)
    if targets is None:
        return extra
    extra["modules_to_save"] = list(targets)
    output, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    tied = output is not None and output.weight is embedding.weight
    if tied and "ensure_weight_tying" in {f.name for f in dataclasses.fields(peft.LoraConfig)}:
        extra["ensure_weight_tying"] = True
    return extra


def _columns(dataset: Any) -> list[str]:
    from .formats.core import columns_of

    return list(columns_of(dataset))


def _is_map_style(dataset: Any) -> bool:
    return hasattr(dataset, "num_rows") and hasattr(dataset, "cache_files")


def _map_kwargs(dataset: Any, args: Any) -> dict[str, Any]:
    return {"num_proc": args.dataset_num_proc} if _is_map_style(dataset) else {}


def _desc(map_kwargs: dict[str, Any], text: str) -> dict[str, Any]:
    return {**map_kwargs, "desc": text} if "num_proc" in map_kwargs else dict(map_kwargs)


def _without_truncation(args: Any) -> Any:
    """A shallow copy of the config with ``max_length=None``: the rows are truncated (and checked) already."""
    bare = copy.copy(args)
    bare.max_length = None
    return bare

