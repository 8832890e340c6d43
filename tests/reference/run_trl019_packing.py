"""Run trl 0.19.1's original ``ConstantLengthDataset`` on rows given as JSON; print the rows it yields as JSON.

A dev-time reference for ``tests/test_packing.py``, run under the separate trl 0.19 interpreter
(``../ref-venv/bin/python tests/reference/run_trl019_packing.py < request.json``), since trl removed the class in
0.20. Only the standard library is imported at module level (pytest's doctest collection imports this file with
the project's interpreter).

Request (stdin)::

    {"tokenizers": {"gpt2": "/tmp/copy-of-gpt2", ...},       # folders that transformers 4.x can load
     "cases": [{"id": "gpt2-shuffled", "tokenizer": "gpt2",
                "rows": ["some text", ...] or [[1, 2, 3], ...],  # strings: a "text" column; ids: "input_ids"
                "container": "datasets" | "list",                 # a datasets.Dataset or a plain list of dicts
                "formatting": null | "qa",                        # "qa": the question/answer function below
                "kwargs": {"seq_length": 32, ...},                # ConstantLengthDataset's other arguments
                "seed": 0, "take": null | 50}, ...]}              # random.seed before iterating; islice(take)

Response (stdout)::

    {"versions": {...}, "results": {"gpt2-shuffled": {"input_ids": [[...]], "labels": [[...]],
     "keys": ["input_ids", "labels"], "tokenized": [[...]] | null, "error": null | "IndexError: ..."}, ...}}

``error`` is what the iteration raised, if anything (the rows are those yielded before). ``tokenized`` is the
reference tokenizer's own encoding of the text rows, so the caller can tell a difference in
packing from a difference between transformers 4.x and 5.x tokenization.
"""

from __future__ import annotations

import itertools
import json
import random
import sys
import warnings


def qa_formatting(row: dict) -> str:
    """The formatting function the ``"qa"`` cases use (the test defines the same one)."""
    return f"### Question: {row['question']}\n### Answer: {row['answer']}"


def _dataset(case: dict):
    from datasets import Dataset

    rows = case["rows"]
    if case.get("formatting") == "qa":
        records = rows
    elif rows and isinstance(rows[0], str):
        records = [{"text": text} for text in rows]
    else:
        records = [{"input_ids": ids} for ids in rows]
    return Dataset.from_list(records) if case.get("container", "datasets") == "datasets" else records


def run_case(case: dict, tok) -> dict:
    from trl.trainer.utils import ConstantLengthDataset

    kwargs = dict(case["kwargs"])
    if case.get("formatting") == "qa":
        kwargs["formatting_func"] = qa_formatting
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # trl's notice that the class is going away
        packed = ConstantLengthDataset(tok, _dataset(case), **kwargs)
    random.seed(case.get("seed", 0))
    examples, error = [], None
    try:
        for example in itertools.islice(packed, case.get("take")):
            examples.append(example)
    except Exception as err:  # noqa: BLE001 - trl 0.19 fails on an empty last buffer: keep what came before
        error = f"{type(err).__name__}: {err}"
    texts = case["rows"] if case["rows"] and isinstance(case["rows"][0], str) else None
    add_special = kwargs.get("add_special_tokens", True)
    return {
        "input_ids": [example["input_ids"].tolist() for example in examples],
        "labels": [example["labels"].tolist() for example in examples],
        "keys": sorted(examples[0]) if examples else [],
        "tokenized": None if texts is None else tok(texts, add_special_tokens=add_special)["input_ids"],
        "error": error,
    }


def main() -> None:
    import transformers
    import trl
    from transformers import AutoTokenizer

    request = json.load(sys.stdin)
    tokenizers = {name: AutoTokenizer.from_pretrained(path) for name, path in request["tokenizers"].items()}
    results = {case["id"]: run_case(case, tokenizers[case["tokenizer"]]) for case in request["cases"]}
    json.dump({"versions": {"trl": trl.__version__, "transformers": transformers.__version__}, "results": results},
              sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
