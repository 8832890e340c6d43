"""patch_trl(): the book chapter's trl 0.x imports and the cells that use them work on trl 1.x.

Each check runs in a fresh interpreter: patching changes trl's modules for the whole process, and the point is
what a user's own script sees.
"""

from __future__ import annotations

import pytest
from helpers import run_python_json

pytest.importorskip("trl")


# -- the English chapter's cells that use the removed imports (shared/seeds/003_08e0fccea0e027a9.txt) ----------
# Run as written after patch_trl(), in a fresh interpreter, with two substitutions: the real tokenizers' folders
# for the hub ids, and the book's first yoda rows (book_facts.YODA_ROWS) for load_dataset("dvgodoy/yoda_sentences").
# What each cell printed is compared in the test below; cells that only print a Map progress bar are left out.
CHAPTER_CELLS = r"""
import json, os, sys
sys.path.insert(0, "tests")
from book_facts import DUMMY_CHAT, LLAMA_PROMPT, MESSAGES, YODA_ROWS
import trl
before, sft = hasattr(trl, "DataCollatorForCompletionOnlyLM"), trl.SFTTrainer
from trl_formatkit.legacy import patch_trl
out = {"before": before, "added": patch_trl(), "again": patch_trl()}
# In [1]
import torch
from peft import prepare_model_for_kbit_training, get_peft_model, LoraConfig
from datasets import load_dataset, Dataset
from torch.utils.data import DataLoader
from transformers import AutoTokenizer, AutoModelForCausalLM, AutoConfig, DataCollatorForLanguageModeling, DataCollatorWithPadding, DataCollatorWithFlattening, BitsAndBytesConfig
from trl import setup_chat_format, DataCollatorForCompletionOnlyLM
from trl.extras.dataset_formatting import FORMAT_MAPPING, instructions_formatting_function, conversations_formatting_function
from trl.trainer import ConstantLengthDataset
from trl.trainer.utils import DataCollatorForCompletionOnlyLM as collator_from_utils
from trl.trainer.utils import ConstantLengthDataset as packing_from_utils
import trl_formatkit
out["same"] = [
    DataCollatorForCompletionOnlyLM is trl_formatkit.DataCollatorForCompletionOnlyLM is collator_from_utils,
    setup_chat_format is trl_formatkit.setup_chat_format,
    conversations_formatting_function is trl_formatkit.conversations_formatting_function,
    ConstantLengthDataset is trl_formatkit.ConstantLengthDataset is packing_from_utils,
]
out["mapping"] = sorted(FORMAT_MAPPING)
out["kept"] = trl.SFTTrainer is sft  # nothing trl still has is replaced
TOKENIZERS = os.environ["FORMATKIT_TOKENIZERS"]
# In [3], [4], [6]-[8]
tokenizer_phi = AutoTokenizer.from_pretrained(f"{TOKENIZERS}/phi-3-mini")
messages = MESSAGES
conversation_ds = Dataset.from_list([{'messages': messages}])
out["In7"] = FORMAT_MAPPING['chatml'] == conversation_ds.features['messages']
formatting_func = conversations_formatting_function(tokenizer_phi, messages_field='messages')
out["In8"] = formatting_func(conversation_ds[0])
# In [10]-[12]
instructions = [{'prompt': 'What is the capital of Argentina?',
                 'completion': 'Buenos Aires.'}]
instruction_ds = Dataset.from_list(instructions)
out["In11"] = FORMAT_MAPPING['instruction'] == instruction_ds.features
formatting_func = instructions_formatting_function(tokenizer_phi)
out["In12"] = formatting_func.__qualname__
# In [32], [37]-[39]
tokenizer_phi.pad_token = tokenizer_phi.unk_token
tokenizer_phi.pad_token_id = tokenizer_phi.unk_token_id
dataset = Dataset.from_list(YODA_ROWS)  # load_dataset("dvgodoy/yoda_sentences", split="train"), renamed
formatting_func = instructions_formatting_function(tokenizer_phi)
dataset = dataset.map(lambda row: {'text': formatting_func(row)}, batched=True, batch_size=32)
sequences = dataset['text']
out["In38"] = sequences[:2]
tokenized_dataset = dataset.map(lambda row: tokenizer_phi(row['text']))
tokenized_dataset = tokenized_dataset.select_columns(['input_ids'])
# In [44], [47]
response_template = '<|assistant|>' # token id 32001
completion_collator = DataCollatorForCompletionOnlyLM(response_template=response_template,
                                                      tokenizer=tokenizer_phi)
completion_dloader = DataLoader(tokenized_dataset, batch_size=2, collate_fn=completion_collator)
completion_batch = next(iter(completion_dloader))
out["In44"] = {key: value.tolist() for key, value in completion_batch.items()}
labels = completion_batch['labels'][0]
valid_tokens = (labels >= 0)
out["In47"] = tokenizer_phi.decode(labels[valid_tokens])
# In [48]-[50]
dummy_chat = DUMMY_CHAT
dummy_ds = Dataset.from_dict({'text': [dummy_chat]})
dummy_ds = dummy_ds.map(lambda row: tokenizer_phi(row['text'])).select_columns(['input_ids'])
completion_dloader = DataLoader(dummy_ds, batch_size=1, collate_fn=completion_collator)
completion_batch = next(iter(completion_dloader))
out["In49"] = completion_batch['labels'].tolist()
labels = completion_batch['labels']
out["In50"] = tokenizer_phi.decode(labels[labels >= 0])
# In [51], [52]
instruction_template = '<|user|>'
response_template = '<|assistant|>'
completion_collator = DataCollatorForCompletionOnlyLM(instruction_template=instruction_template,
                                                      response_template=response_template,
                                                      tokenizer=tokenizer_phi)
completion_dloader = DataLoader(dummy_ds, batch_size=1, collate_fn=completion_collator)
completion_batch = next(iter(completion_dloader))
out["In51"] = completion_batch['labels'].tolist()
labels = completion_batch['labels']
out["In52"] = tokenizer_phi.decode(labels[labels >= 0])
# In [53]-[55]
sequences = dataset['text']
iterator = ConstantLengthDataset(tokenizer_phi, dataset,
                                 dataset_text_field='text',
                                 seq_length=64, shuffle=False)

def data_generator(iterator):
    yield from iterator

packed_dataset = Dataset.from_generator(
    data_generator,
    gen_kwargs={"iterator": iterator}
)
out["In54"] = {"features": list(packed_dataset.features), "num_rows": packed_dataset.num_rows}
input_ids = packed_dataset['input_ids']
out["In55"] = tokenizer_phi.decode(input_ids[0])
# In [60]
response_template = '<|assistant|>'
completion_nopad_collator = DataCollatorForCompletionOnlyLM(response_template=response_template,
                                                            tokenizer=tokenizer_phi,
                                                            padding_free=True)
completion_nopad_dloader = DataLoader(tokenized_dataset, batch_size=2, collate_fn=completion_nopad_collator)
completion_nopad_batch = next(iter(completion_nopad_dloader))
out["In60"] = {key: completion_nopad_batch[key].tolist() for key in ("input_ids", "labels", "position_ids")}
# In [184], [188], [190], [191]-[193]
tokenizer_llama = AutoTokenizer.from_pretrained(f"{TOKENIZERS}/llama-2")
tokenizer_llama.pad_token = tokenizer_llama.unk_token
tokenizer_llama.pad_token_id = tokenizer_llama.unk_token_id
prompt = LLAMA_PROMPT
dummy_ds = Dataset.from_dict({'text': [prompt]})
dummy_tokenized = dummy_ds.map(lambda row: tokenizer_llama(row['text'])).select_columns(['input_ids'])
response_template = "### Assistant:"
bad_collator = DataCollatorForCompletionOnlyLM(response_template, tokenizer=tokenizer_llama)
bad_dloader = DataLoader(dummy_tokenized, batch_size=1, collate_fn=bad_collator)
bad_batch = next(iter(bad_dloader))
out["In188"] = bad_batch['labels'].tolist()
modified_response_template = "\n### Assistant:"
token_ids = tokenizer_llama.encode(modified_response_template, add_special_tokens=False)
fixed_token_ids = token_ids[2:]
fixed_collator = DataCollatorForCompletionOnlyLM(fixed_token_ids, tokenizer=tokenizer_llama)
fixed_dloader = DataLoader(dummy_tokenized, batch_size=1, collate_fn=fixed_collator)
fixed_batch = next(iter(fixed_dloader))
out["In190"] = fixed_batch['labels'].tolist()
response_template = "### Assistant:"
out["In191"] = tokenizer_llama.add_special_tokens({'additional_special_tokens': [response_template]})
dummy_tokenized = dummy_ds.map(lambda row: tokenizer_llama(row['text'])).select_columns(['input_ids'])
special_collator = DataCollatorForCompletionOnlyLM(response_template, tokenizer=tokenizer_llama)
special_dloader = DataLoader(dummy_tokenized, batch_size=1, collate_fn=special_collator)
special_batch = next(iter(special_dloader))
out["In193"] = {key: special_batch[key].tolist() for key in ("input_ids", "labels")}
print(json.dumps(out))
"""


def test_chapter_cells_run_after_patch_trl(tokenizer_path, tmp_path, monkeypatch):
    from book_facts import (
        BOOK_CONVERSATION_TEXT, BOOK_PACKED_FEATURES, BOOK_PACKED_FIRST_ROW, DUMMY_IDS, LLAMA_IDS, YODA_IDS, YODA_TEXTS,
    )

    tokenizer_path("phi-3-mini")  # skips, with the reason, where the real tokenizers are absent
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path))  # Dataset.from_generator writes its rows there
    out = run_python_json(CHAPTER_CELLS, timeout=300)
    # In [1]: the removed imports, restored (and only once)
    assert out["before"] is False  # trl 1.x really removed them
    for name in ("trl.DataCollatorForCompletionOnlyLM", "trl.setup_chat_format", "trl.extras.dataset_formatting",
                 "trl.trainer.ConstantLengthDataset", "trl.trainer.utils.ConstantLengthDataset"):
        assert name in out["added"]
    assert out["again"] == []  # idempotent
    assert out["same"] == [True] * 4
    assert out["mapping"] == ["chatml", "instruction"]
    assert out["kept"] is True
    assert out["In7"] is True and out["In11"] is True
    assert out["In8"] == BOOK_CONVERSATION_TEXT
    assert out["In12"] == "instructions_formatting_function.<locals>.format_dataset"  # the book's repr names it
    assert out["In38"] == YODA_TEXTS
    # In [44]: the second row left-padded with ten 0s (PAD = UNK), only the first answer trained
    assert out["In44"]["input_ids"] == [YODA_IDS[0], [0] * 10 + YODA_IDS[1]]
    assert out["In44"]["attention_mask"][1] == [0] * 10 + [1] * 28
    assert out["In47"] == "On the smooth planks, the birch canoe slid. Yes, hrrrm.<|end|><|endoftext|>"
    assert out["In49"] == [[-100] * 19 + DUMMY_IDS[19:]]
    assert out["In50"] == "I'm fine too!\n<|endoftext|>"
    assert out["In51"] == [[-100] * 4 + DUMMY_IDS[4:9] + [-100] * 10 + DUMMY_IDS[19:]]
    assert out["In52"] == "How are you?\n I'm fine too!\n<|endoftext|>"
    # In [54]: the book packed all 720 rows into 351; here the two rows it shows fill one row of 64
    assert out["In54"] == {"features": BOOK_PACKED_FEATURES, "num_rows": 1}
    assert out["In55"] == BOOK_PACKED_FIRST_ROW
    flat = YODA_IDS[0] + YODA_IDS[1]
    assert out["In60"]["input_ids"] == [flat]
    assert out["In60"]["position_ids"] == [list(range(38)) + list(range(28))]
    assert out["In60"]["labels"] == [[-100] * 16 + YODA_IDS[0][16:] + [-100] * 13 + YODA_IDS[1][13:]]
    # In [188]: the book's collator found nothing in context and trained nothing (all -100); ours finds the
    # template as it tokenizes after a newline (documented difference), so it trains what In [190]'s fix trains
    fixed = [[-100] * 12 + LLAMA_IDS[12:]]
    assert out["In190"] == fixed and out["In188"] == fixed
    assert out["In191"] == 1
    ids = out["In193"]["input_ids"][0]  # transformers 5 drops the book's 29871 after the new special token
    assert ids[7] == 32000 and ids[8:] == LLAMA_IDS[12:]
    assert out["In193"]["labels"] == [[-100] * 8 + LLAMA_IDS[12:]]
