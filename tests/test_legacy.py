"""patch_trl(): the book chapter's trl 0.x imports work on trl 1.x, in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import run_python_json

pytest.importorskip("trl")

BOOK_IMPORTS = """
import json, sys, trl
before = hasattr(trl, "DataCollatorForCompletionOnlyLM")
from trl_formatkit.legacy import patch_trl
added = patch_trl()
again = patch_trl()
from trl import setup_chat_format, DataCollatorForCompletionOnlyLM
from trl.trainer.utils import DataCollatorForCompletionOnlyLM as from_utils
from trl.extras.dataset_formatting import FORMAT_MAPPING, instructions_formatting_function, conversations_formatting_function
import trl_formatkit
print(json.dumps({
    "before": before,
    "added": added,
    "again": again,
    "same_collator": DataCollatorForCompletionOnlyLM is trl_formatkit.DataCollatorForCompletionOnlyLM is from_utils,
    "same_setup": setup_chat_format is trl_formatkit.setup_chat_format,
    "same_formatting": conversations_formatting_function is trl_formatkit.conversations_formatting_function,
    "mapping": sorted(FORMAT_MAPPING),
}))
"""


def test_book_imports_work_after_patch_trl():
    out = run_python_json(BOOK_IMPORTS, timeout=300)
    assert out["before"] is False  # trl 1.x really removed it
    assert "trl.DataCollatorForCompletionOnlyLM" in out["added"] and "trl.setup_chat_format" in out["added"]
    assert "trl.extras.dataset_formatting" in out["added"]
    assert out["again"] == []  # idempotent
    assert out["same_collator"] and out["same_setup"] and out["same_formatting"]
    assert out["mapping"] == ["chatml", "instruction"]


def test_patch_trl_does_not_replace_what_trl_has():
    proc = subprocess.run(
        [sys.executable, "-c", "import trl, json; from trl_formatkit.legacy import patch_trl; sft = trl.SFTTrainer;"
         "patch_trl(); print(json.dumps(trl.SFTTrainer is sft))"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("true")
