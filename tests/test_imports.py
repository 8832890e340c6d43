"""Import hygiene: the light modules load without trl or datasets, and every public name resolves.

Each check runs in a fresh interpreter (``sys.modules`` of this pytest process already holds trl and datasets,
imported by other tests), so what a module pulls in at import time is seen exactly.
"""

from __future__ import annotations


from pathlib import Path

import pytest
from helpers import run_python_json

REPO_ROOT = Path(__file__).resolve().parent.parent

# Modules a collator, attention or data user imports; they must not pull in a trainer stack (trl) or datasets.
LIGHT_MODULES = (
    "trl_formatkit",
    "trl_formatkit.errors",
    "trl_formatkit.masking",
    "trl_formatkit.templates",
    "trl_formatkit.rows",
    "trl_formatkit.collators",
    "trl_formatkit.structure",
    "trl_formatkit.packing",
    "trl_formatkit.special_tokens",
    "trl_formatkit.attention",
    "trl_formatkit.plugins",
    "trl_formatkit.distributed",
)
HEAVY = ("trl", "datasets")


def test_light_modules_do_not_import_trl_or_datasets():
    """One fresh interpreter imports the light modules one by one and records what each pulled in."""
    out = run_python_json(
        "import importlib, json, sys\n"
        "loaded = {}\n"
        f"for module in {LIGHT_MODULES!r}:\n"
        "    importlib.import_module(module)\n"
        f"    loaded[module] = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "print(json.dumps(loaded))\n"
    )
    culprits = {module: heavy for module, heavy in out.items() if heavy}
    assert list(out) == list(LIGHT_MODULES)
    assert not culprits, f"{culprits}: import these inside the functions that need them"


def test_building_and_calling_the_collator_stays_light():
    """Not just the import: constructing and calling the collator must not reach for trl/datasets either."""
    code = (
        "import json, sys\n"
        "from tokenizers import Tokenizer, models, pre_tokenizers\n"
        "from transformers import PreTrainedTokenizerFast\n"
        "from trl_formatkit import DataCollatorForCompletionOnlyLM\n"
        "vocab = {'<pad>': 0, '<eos>': 1, '<user>': 2, '<bot>': 3, 'hi': 4}\n"
        "backend = Tokenizer(models.WordLevel(vocab, unk_token='<pad>'))\n"
        "backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()\n"
        "tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token='<pad>', eos_token='<eos>')\n"
        "for free in (False, True):\n"
        "    c = DataCollatorForCompletionOnlyLM('<bot>', '<user>', tokenizer=tok, padding_free=free)\n"
        "    c([[2, 4, 3, 4, 1], [2, 4, 3, 1]])\n"
        f"print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})))\n"
    )
    out = run_python_json(code)
    assert out == [], f"building/calling the collator loaded {out}"


def test_every_public_name_resolves():
    """``trl_formatkit.__all__`` is read at run time, so names other modules add are covered as they land."""
    out = run_python_json(
        "import json, trl_formatkit\n"
        "bad = {}\n"
        "for name in trl_formatkit.__all__:\n"
        "    try:\n"
        "        getattr(trl_formatkit, name)\n"
        "    except Exception as e:\n"
        "        bad[name] = f'{type(e).__name__}: {e}'\n"
        "print(json.dumps({'n': len(trl_formatkit.__all__), 'bad': bad, 'dir': sorted(set(trl_formatkit.__all__) - set(dir(trl_formatkit)))}))\n"
    )
    assert out["n"] > 0
    assert out["bad"] == {}, f"public names that do not resolve: {out['bad']}"
    assert out["dir"] == [], f"public names missing from dir(trl_formatkit): {out['dir']}"


def test_all_has_no_duplicates_and_unknown_names_raise_attribute_error():
    import trl_formatkit

    assert len(trl_formatkit.__all__) == len(set(trl_formatkit.__all__))
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        trl_formatkit.NoSuchName  # noqa: B018
