"""Run trl 0.19.1's original ``DataCollatorForCompletionOnlyLM`` on batches given as JSON; print its batches as JSON.

A dev-time reference for ``tests/test_reference_trl019.py``. It runs under a *separate* interpreter that has trl
0.19.x and transformers 4.x (``../ref-venv/bin/python tests/reference/run_trl019.py < request.json``), since
trl removed the collator in 0.20 and it cannot be imported next to a current trl. Token ids come from the caller,
so both collators see identical rows; the tokenizer here only encodes string templates and gives the pad id and
padding side.

Request (stdin)::

    {"tokenizers": {"phi": "/tmp/copy-of-phi-3-mini", ...},      # folders that transformers 4.x can load
     "cases": [{"id": "yoda", "tokenizer": "phi",
                "tokenizer_setup": {"pad_token": "<unk>", "padding_side": "left",
                                    "additional_special_tokens": ["### Assistant:"]},   # all optional
                "collator": {"response_template": "<|assistant|>", "instruction_template": null,
                             "padding_free": false},
                "rows": [[32010, 450, ...], ...]}, ...]}

Response (stdout)::

    {"versions": {...}, "results": {"yoda": {"input_ids": [[...]], "labels": [[...]], "attention_mask": ...,
     "position_ids": ..., "cu_seq_lens_q": ..., "max_length_q": ..., "response_token_ids": [...],
     "instruction_token_ids": [...] | null, "pad_token_id": 0, "warnings": ["..."]}, ...}}

Only the standard library is imported at module level: pytest's doctest collection imports this file with the
project's interpreter, where trl 0.19 does not exist.
"""

from __future__ import annotations

import json
import sys
import warnings


def _load_tokenizer(path: str, setup: dict):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if setup.get("additional_special_tokens"):
        tok.add_special_tokens({"additional_special_tokens": list(setup["additional_special_tokens"])})
    if "pad_token" in setup:
        tok.pad_token = setup["pad_token"]
    if "padding_side" in setup:
        tok.padding_side = setup["padding_side"]
    return tok


def _to_json(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def run(request: dict) -> dict:
    import transformers
    import trl
    from trl import DataCollatorForCompletionOnlyLM

    results = {}
    loaded = {}  # (folder, setup) -> tokenizer: loading a tokenizer.json takes longer than collating
    for case in request["cases"]:
        setup = case.get("tokenizer_setup", {})
        key = (case["tokenizer"], json.dumps(setup, sort_keys=True))
        if key not in loaded:
            loaded[key] = _load_tokenizer(request["tokenizers"][case["tokenizer"]], setup)
        tok = loaded[key]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            collator = DataCollatorForCompletionOnlyLM(tokenizer=tok, **case["collator"])
            batch = collator([{"input_ids": row} for row in case["rows"]])
        out = {key: _to_json(value) for key, value in batch.items()}
        out["response_token_ids"] = list(collator.response_token_ids)
        out["instruction_token_ids"] = (
            None if collator.instruction_token_ids is None else list(collator.instruction_token_ids)
        )
        out["pad_token_id"] = tok.pad_token_id
        out["padding_side"] = tok.padding_side
        # the construction-time DeprecationWarning is trl's notice that the class is going away: not data
        out["warnings"] = [
            f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, DeprecationWarning)
        ]
        results[case["id"]] = out
    return {
        "versions": {"trl": trl.__version__, "transformers": transformers.__version__},
        "results": results,
    }


def main() -> None:
    request = json.load(sys.stdin)
    json.dump(run(request), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
