"""The book chapter's rows and printed outputs (shared/seeds/003_08e0fccea0e027a9.txt), in one place.

Every test that reproduces the chapter imports its facts from here, so a fact is written once.
"""

from __future__ import annotations

import os
from pathlib import Path

# The original trl 0.19.1 collator runs in a separate virtualenv beside the checkout (dev-time comparisons).
REF_PYTHON = Path(
    os.environ.get("FORMATKIT_REF_PYTHON", Path(__file__).resolve().parents[2] / "ref-venv" / "bin" / "python")
)

# In [4]: the conversation, and its rendering by Phi-3-mini's chat template
MESSAGES = [
    {"role": "system", "content": "You are a helpful AI assistant."},
    {"role": "user", "content": "What is the capital of Argentina?"},
    {"role": "assistant", "content": "Buenos Aires."},
]
BOOK_CONVERSATION_TEXT = (
    "<|system|>\nYou are a helpful AI assistant.<|end|>\n<|user|>\nWhat is the capital of Argentina?<|end|>\n"
    "<|assistant|>\nBuenos Aires.<|end|>\n<|endoftext|>"
)
# In [14] / In [15]
BATCH_PROMPTS_COMPLETIONS = {
    "prompt": ["What is the capital of Argentina?", "What is the capital of the United States?"],
    "completion": ["Buenos Aires.", "Washington D.C."],
}
BATCH_MESSAGES = [
    [
        {"role": "user", "content": "What is the capital of Argentina?"},
        {"role": "assistant", "content": "Buenos Aires."},
    ],
    [
        {"role": "user", "content": "What is the capital of the United States?"},
        {"role": "assistant", "content": "Washington D.C."},
    ],
]
# In [24]: formatted_ds['text']
BYOFD_TEXTS = [
    "<|user|>\nWhat is the capital of Argentina?<|end|>\n<|assistant|>\nBuenos Aires.<|end|>\n<|endoftext|>",
    "<|user|>\nWhat is the capital of the United States?<|end|>\n<|assistant|>\nWashington D.C.<|end|>\n"
    "<|endoftext|>",
]
# In [37]: the first rows of dvgodoy/yoda_sentences after the book's renames
YODA_ROWS = [
    {
        "prompt": "The birch canoe slid on the smooth planks.",
        "completion": "On the smooth planks, the birch canoe slid. Yes, hrrrm.",
    },
    {
        "prompt": "Glue the sheet to the dark blue background.",
        "completion": "Glue the sheet to the dark blue background, you must.",
    },
]
# In [38]: print(sequences[:2])
YODA_TEXTS = [
    "<|user|>\nThe birch canoe slid on the smooth planks.<|end|>\n<|assistant|>\nOn the smooth planks, the birch "
    "canoe slid. Yes, hrrrm.<|end|>\n<|endoftext|>",
    "<|user|>\nGlue the sheet to the dark blue background.<|end|>\n<|assistant|>\nGlue the sheet to the dark blue "
    "background, you must.<|end|>\n<|endoftext|>",
]
# In [40]: their token ids (the padded batch shows the second one left-padded with ten 0s)
YODA_IDS = [
    [32010, 450, 29773, 305, 508, 7297, 2243, 333, 373, 278, 10597, 715, 1331, 29889, 32007, 32001, 1551, 278,
     10597, 715, 1331, 29892, 278, 29773, 305, 508, 7297, 2243, 333, 29889, 3869, 29892, 298, 21478, 1758, 29889,
     32007, 32000],
    [32010, 8467, 434, 278, 9869, 304, 278, 6501, 7254, 3239, 29889, 32007, 32001, 8467, 434, 278, 9869, 304, 278,
     6501, 7254, 3239, 29892, 366, 1818, 29889, 32007, 32000],
]  # fmt: skip
# In [54] / In [55]: ConstantLengthDataset(tokenizer_phi, dataset, dataset_text_field='text', seq_length=64,
# shuffle=False) over the yoda texts, then Dataset.from_generator: the features, and the first row decoded
BOOK_PACKED_FEATURES = ["input_ids", "labels"]
BOOK_PACKED_FIRST_ROW = (
    "<|user|> The birch canoe slid on the smooth planks.<|end|><|assistant|> On the smooth planks, the birch canoe "
    "slid. Yes, hrrrm.<|end|><|endoftext|><|endoftext|><|user|> Glue the sheet to the dark blue background.<|end|>"
    "<|assistant|> Glue the sheet to the dark blue background, you must"
)
# In [48] / In [49]: the multi-turn dummy chat
DUMMY_CHAT = "<|user|>Hello\n<|assistant|>How are you?\n<|user|>I'm fine! You?\n<|assistant|>I'm fine too!\n<|endoftext|>"
DUMMY_IDS = [32010, 15043, 13, 32001, 1128, 526, 366, 29973, 13, 32010, 306, 29915, 29885, 2691, 29991, 887, 29973,
             13, 32001, 306, 29915, 29885, 2691, 2086, 29991, 13, 32000]  # fmt: skip
# In [185] / In [188]: the Llama-2 context pitfall
LLAMA_PROMPT = "### User: Hello\n\n### Assistant: Hi, how can I help you?"
LLAMA_IDS = [1, 835, 4911, 29901, 15043, 13, 13, 2277, 29937, 4007, 22137, 29901, 6324, 29892, 920, 508, 306, 1371,
             366, 29973]  # fmt: skip
# In [192]: after tokenizer.add_special_tokens({"additional_special_tokens": ["### Assistant:"]}), as the book
# printed it (transformers 4.x). transformers 5 drops the 29871 ("▁") after the new special token.
LLAMA_SPECIAL_IDS = [1, 835, 4911, 29901, 15043, 13, 13, 32000, 29871, 6324, 29892, 920, 508, 306, 1371, 366, 29973]
