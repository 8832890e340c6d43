"""trl's ``trl.extras.dataset_formatting``, restored: the book's cells, trl 0.19's behaviour, lazy ``FORMAT_MAPPING``.

The book's printed outputs (``shared/seeds/003_08e0fccea0e027a9.txt``, Korean edition ``000_...``) are checked with
the real phi-3-mini tokenizer; a differential test runs trl 0.19.1's own module (``../ref-venv``) on the same
rows where that interpreter exists.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from datasets import Dataset

from trl_formatkit import (
    FORMAT_MAPPING,
    conversations_formatting_function,
    get_formatting_func_from_dataset,
    instructions_formatting_function,
)
from trl_formatkit.errors import FormatKitValueError

REPO_ROOT = Path(__file__).resolve().parent.parent
from book_facts import (
    BATCH_MESSAGES,
    BATCH_PROMPTS_COMPLETIONS,
    BOOK_CONVERSATION_TEXT,
    BYOFD_TEXTS,
    MESSAGES,
    REF_PYTHON,
    YODA_ROWS,
    YODA_TEXTS,
)
from helpers import run_python_json

YODA = {key: [row[key] for row in YODA_ROWS] for key in ("prompt", "completion")}  # as columns


@pytest.fixture
def tokenizer_phi(load_tokenizer):
    return load_tokenizer("phi-3-mini")


# -- FORMAT_MAPPING ---------------------------------------------------------------------------------------------
def test_format_mapping_equals_what_datasets_infers():
    """In [7] and In [11]: both print True."""
    conversation_ds = Dataset.from_list([{"messages": MESSAGES}])
    assert FORMAT_MAPPING["chatml"] == conversation_ds.features["messages"]
    instruction_ds = Dataset.from_list([{"prompt": "What is the capital of Argentina?", "completion": "Buenos Aires."}])
    assert FORMAT_MAPPING["instruction"] == instruction_ds.features
    assert FORMAT_MAPPING["chatml"] == Dataset.from_dict({"messages": BATCH_MESSAGES}).features["messages"]
    assert FORMAT_MAPPING["instruction"] == Dataset.from_dict(BATCH_PROMPTS_COMPLETIONS).features
    # and not equal to other schemas
    assert FORMAT_MAPPING["instruction"] != Dataset.from_dict({**BATCH_PROMPTS_COMPLETIONS, "id": [1, 2]}).features
    sharegpt = Dataset.from_list([{"messages": [{"from": "human", "value": "hi"}]}])
    assert FORMAT_MAPPING["chatml"] != sharegpt.features["messages"]


def test_format_mapping_prints_as_in_the_korean_edition():
    """000_...txt, In [10] (datasets 4+): the repr of the whole mapping."""
    assert repr(FORMAT_MAPPING) == (
        "{'chatml': List({'content': Value('string'), 'role': Value('string')}), "
        "'instruction': {'completion': Value('string'), 'prompt': Value('string')}}"
    )


def test_format_mapping_is_built_lazily_without_importing_datasets_first():
    code = (
        "import json, sys\n"
        "import trl_formatkit, trl_formatkit.formats.dataset_formatting as m\n"
        "before = 'datasets' in sys.modules or 'FORMAT_MAPPING' in vars(m)\n"
        "from trl_formatkit import FORMAT_MAPPING\n"
        "after = 'datasets' in sys.modules\n"
        "print(json.dumps({'before': before, 'after': after, 'same': FORMAT_MAPPING is m.FORMAT_MAPPING}))\n"
    )
    assert run_python_json(code) == {"before": False, "after": True, "same": True}


def test_unknown_module_attribute_raises_attribute_error():
    import trl_formatkit.formats.dataset_formatting as module

    with pytest.raises(AttributeError, match="no attribute 'NOPE'"):
        module.NOPE  # noqa: B018


# -- the book's cells -------------------------------------------------------------------------------------------
def test_conversations_formatting_function_prints_the_book_text(tokenizer_phi):
    """In [8]."""
    conversation_ds = Dataset.from_list([{"messages": MESSAGES}])
    formatting_func = conversations_formatting_function(tokenizer_phi, messages_field="messages")
    assert formatting_func(conversation_ds[0]) == BOOK_CONVERSATION_TEXT
    assert formatting_func.__qualname__ == "conversations_formatting_function.<locals>.format_dataset"


def test_conversations_formatting_function_batched_gives_the_byofd_texts(tokenizer_phi):
    """In [23]-[24]: formatting the batch of messages gives the book's two texts."""
    ds_msg = Dataset.from_dict({"messages": BATCH_MESSAGES})
    formatting_func = conversations_formatting_function(tokenizer_phi, "messages")
    formatted_ds = ds_msg.map(lambda batch: {"text": formatting_func(batch)}, batched=True)
    assert formatted_ds["text"] == BYOFD_TEXTS
    conversations = Dataset.from_dict({"conversations": BATCH_MESSAGES})
    assert conversations_formatting_function(tokenizer_phi, "conversations")(conversations[:2]) == BYOFD_TEXTS


def test_instructions_formatting_function_single_and_batched(tokenizer_phi):
    """In [12] and In [38]: the map with batch_size=32 prints the book's two sequences."""
    formatting_func = instructions_formatting_function(tokenizer_phi)
    assert formatting_func.__qualname__ == "instructions_formatting_function.<locals>.format_dataset"
    assert formatting_func({"prompt": BATCH_PROMPTS_COMPLETIONS["prompt"][0], "completion": "Buenos Aires."}) == (
        BYOFD_TEXTS[0]
    )
    dataset = Dataset.from_dict(YODA)
    dataset = dataset.map(lambda row: {"text": formatting_func(row)}, batched=True, batch_size=32)
    assert dataset["text"][:2] == YODA_TEXTS
    assert formatting_func(Dataset.from_dict(BATCH_PROMPTS_COMPLETIONS)[:2]) == BYOFD_TEXTS


def test_tools_reach_the_chat_template():
    class Recorder:
        def __init__(self):
            self.calls = []

        def apply_chat_template(self, conversation, **kwargs):
            self.calls.append(kwargs)
            return "x"

    tools = [{"type": "function", "function": {"name": "f"}}]
    tok = Recorder()
    conversations_formatting_function(tok, "messages", tools=tools)({"messages": MESSAGES})
    assert tok.calls == [{"tokenize": False, "tools": tools}]


def test_empty_conversation_is_an_error_that_says_what_to_do():
    formatting_func = conversations_formatting_function(object(), "messages")
    with pytest.raises(FormatKitValueError, match="empty conversation.*filter"):
        formatting_func({"messages": []})


# -- get_formatting_func_from_dataset ---------------------------------------------------------------------------
def _kind(func):
    if func is None:
        return None
    return func.__qualname__.split(".")[0]


def test_get_formatting_func_from_dataset_follows_trl_019(tokenizer_phi):
    chat = Dataset.from_dict({"messages": BATCH_MESSAGES})
    func = get_formatting_func_from_dataset(chat, tokenizer_phi)
    assert _kind(func) == "conversations_formatting_function" and func(chat[:2]) == BYOFD_TEXTS
    conv = Dataset.from_dict({"conversations": BATCH_MESSAGES})
    func = get_formatting_func_from_dataset(conv, tokenizer_phi)
    assert _kind(func) == "conversations_formatting_function" and func(conv[:2]) == BYOFD_TEXTS
    inst = Dataset.from_dict(BATCH_PROMPTS_COMPLETIONS)
    func = get_formatting_func_from_dataset(inst, tokenizer_phi)
    assert _kind(func) == "instructions_formatting_function" and func(inst[:2]) == BYOFD_TEXTS
    # trl 0.19 required an exact instruction schema and a role/content messages column: None otherwise
    assert get_formatting_func_from_dataset(inst.add_column("id", [1, 2]), tokenizer_phi) is None
    sharegpt = Dataset.from_dict({"conversations": [[{"from": "human", "value": "hi"}]]})
    assert get_formatting_func_from_dataset(sharegpt, tokenizer_phi) is None
    assert get_formatting_func_from_dataset(Dataset.from_dict({"text": ["x"]}), tokenizer_phi) is None
    assert get_formatting_func_from_dataset(BATCH_PROMPTS_COMPLETIONS, tokenizer_phi) is None  # not a Dataset
    assert get_formatting_func_from_dataset(chat.to_iterable_dataset(), tokenizer_phi) is None


# -- differential: trl 0.19.1's own module ----------------------------------------------------------------------
REFERENCE = r"""
import json, sys
from datasets import Dataset
from transformers import AutoTokenizer
from trl.extras.dataset_formatting import (FORMAT_MAPPING, conversations_formatting_function,
    get_formatting_func_from_dataset, instructions_formatting_function)
req = json.load(sys.stdin)
tok = AutoTokenizer.from_pretrained(req["tokenizer"])
conv = conversations_formatting_function(tok, "messages")
inst = instructions_formatting_function(tok)
out = {
    "conv_single": [conv({"messages": chat}) for chat in req["chats"]],
    "conv_batch": conv({"messages": req["chats"]}),
    "inst_single": [inst({"prompt": p, "completion": c}) for p, c in zip(req["prompts"], req["completions"])],
    "inst_batch": inst({"prompt": req["prompts"], "completion": req["completions"]}),
    "select": {},
}
for name, rows in req["datasets"].items():
    ds = Dataset.from_list(rows)
    func = get_formatting_func_from_dataset(ds, tok)
    out["select"][name] = None if func is None else [func.__qualname__, func(ds[:2])]
print(json.dumps(out))
"""


def _chats():
    chats = [MESSAGES, *BATCH_MESSAGES]
    chats.append(
        [
            {"role": "user", "content": "Línea uno\nline two — naïve café 🙂"},
            {"role": "assistant", "content": "  spaces kept  "},
            {"role": "user", "content": "<|user|> literal marker text"},
            {"role": "assistant", "content": ""},
        ]
    )
    return chats


DATASETS = {
    "messages": [{"messages": m} for m in BATCH_MESSAGES],
    "conversations": [{"conversations": m} for m in BATCH_MESSAGES],
    "instruction": [{"prompt": p, "completion": c} for p, c in zip(*BATCH_PROMPTS_COMPLETIONS.values())],
    "instruction+id": [{"id": 1, "prompt": "p", "completion": "c"}, {"id": 2, "prompt": "q", "completion": "d"}],
    "messages+extra-column": [{"messages": m, "source": "s"} for m in BATCH_MESSAGES],
    "messages-with-name-key": [{"messages": [{"role": "user", "content": "hi", "name": "bob"}]}] * 2,
    "sharegpt": [{"conversations": [{"from": "human", "value": "hi"}]}] * 2,
    "sharegpt+instruction": [{"conversations": [{"from": "human", "value": "hi"}], "prompt": "p", "completion": "c"}]
    * 2,
    "text": [{"text": "a"}, {"text": "b"}],
}


def test_matches_trl_019_side_by_side(tokenizer_path, tmp_path):
    if not REF_PYTHON.exists():
        pytest.skip(f"the trl 0.19 reference interpreter {REF_PYTHON} is absent (set FORMATKIT_REF_PYTHON)")
    from transformers import AutoTokenizer

    ref_tok = tmp_path / "phi-3-mini"
    shutil.copytree(tokenizer_path("phi-3-mini"), ref_tok)
    config = json.loads((ref_tok / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "LlamaTokenizerFast"  # transformers 4.x does not know TokenizersBackend
    (ref_tok / "tokenizer_config.json").write_text(json.dumps(config))
    chats = _chats()
    prompts = ["What is the capital of Argentina?", "Línea\nuno", ""]
    completions = ["Buenos Aires.", " two ", "<|end|>"]
    request = {"tokenizer": str(ref_tok), "chats": chats, "prompts": prompts, "completions": completions,
               "datasets": DATASETS}
    proc = subprocess.run(
        [str(REF_PYTHON), "-c", REFERENCE],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ref = json.loads(proc.stdout.strip().splitlines()[-1])

    tok = AutoTokenizer.from_pretrained(str(tokenizer_path("phi-3-mini")))
    conv = conversations_formatting_function(tok, "messages")
    inst = instructions_formatting_function(tok)
    assert [conv({"messages": chat}) for chat in chats] == ref["conv_single"]
    assert conv({"messages": chats}) == ref["conv_batch"]
    assert [inst({"prompt": p, "completion": c}) for p, c in zip(prompts, completions)] == ref["inst_single"]
    assert inst({"prompt": prompts, "completion": completions}) == ref["inst_batch"]
    ours = {}
    for name, rows in DATASETS.items():
        ds = Dataset.from_list(rows)
        func = get_formatting_func_from_dataset(ds, tok)
        ours[name] = None if func is None else [func.__qualname__, func(ds[:2])]
    assert ours == ref["select"]
    assert ref["select"]["instruction+id"] is None and ref["select"]["messages"] is not None  # the test has teeth
