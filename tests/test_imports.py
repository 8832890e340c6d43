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


# One fresh interpreter, three steps in this order (each test reads its own step): the light modules imported one by
# one, with what each pulled in; then a collator built and called; then every public name resolved (which imports
# the heavy modules: last). Steps 1 and 2 see exactly what they load, as the first step asserts that it loads no
# trl or datasets. One interpreter instead of three: three imports of torch and transformers saved.
FRESH_INTERPRETER = f"""
import importlib, json, sys
HEAVY = {HEAVY!r}
def heavy():
    return sorted(m for m in sys.modules if m.split('.')[0] in HEAVY)
out = {{"light": {{}}}}
for module in {LIGHT_MODULES!r}:
    importlib.import_module(module)
    out["light"][module] = heavy()

from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
from trl_formatkit import DataCollatorForCompletionOnlyLM
vocab = {{'<pad>': 0, '<eos>': 1, '<user>': 2, '<bot>': 3, 'hi': 4}}
backend = Tokenizer(models.WordLevel(vocab, unk_token='<pad>'))
backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token='<pad>', eos_token='<eos>')
for free in (False, True):
    c = DataCollatorForCompletionOnlyLM('<bot>', '<user>', tokenizer=tok, padding_free=free)
    c([[2, 4, 3, 4, 1], [2, 4, 3, 1]])
out["collator"] = heavy()

import trl_formatkit
bad = {{}}
for name in trl_formatkit.__all__:
    try:
        getattr(trl_formatkit, name)
    except Exception as e:
        bad[name] = f'{{type(e).__name__}}: {{e}}'
out["names"] = {{'n': len(trl_formatkit.__all__), 'bad': bad,
                'dir': sorted(set(trl_formatkit.__all__) - set(dir(trl_formatkit)))}}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def fresh():
    return run_python_json(FRESH_INTERPRETER)


def test_light_modules_do_not_import_trl_or_datasets(fresh):
    """The fresh interpreter imports the light modules one by one and records what each pulled in."""
    out = fresh["light"]
    culprits = {module: heavy for module, heavy in out.items() if heavy}
    assert list(out) == list(LIGHT_MODULES)
    assert not culprits, f"{culprits}: import these inside the functions that need them"


def test_building_and_calling_the_collator_stays_light(fresh):
    """Not just the import: constructing and calling the collator must not reach for trl/datasets either."""
    assert fresh["light"][LIGHT_MODULES[-1]] == []  # nothing heavy before: whatever is loaded now, the collator did
    assert fresh["collator"] == [], f"building/calling the collator loaded {fresh['collator']}"


def test_every_public_name_resolves(fresh):
    """``trl_formatkit.__all__`` is read at run time, so names other modules add are covered as they land."""
    out = fresh["names"]
    assert out["n"] > 0
    assert out["bad"] == {}, f"public names that do not resolve: {out['bad']}"
    assert out["dir"] == [], f"public names missing from dir(trl_formatkit): {out['dir']}"


def test_all_has_no_duplicates_and_unknown_names_raise_attribute_error():
    import trl_formatkit

    assert len(trl_formatkit.__all__) == len(set(trl_formatkit.__all__))
    with pytest.raises(AttributeError, match="no attribute 'NoSuchName'"):
        trl_formatkit.NoSuchName  # noqa: B018
