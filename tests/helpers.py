"""Small helpers shared by the tests (importable because conftest puts ``tests/`` on ``sys.path``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent


def run_python_json(code: str, timeout: int = 120) -> Any:
    """Run ``code`` in a fresh interpreter from the repo root; it prints one JSON value on its last line."""
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"subprocess failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])

# A two-exchange chat the special-token tests render.
CHAT = [
    {"role": "user", "content": "What is the capital of Argentina?"},
    {"role": "assistant", "content": "Buenos Aires."},
]


def _tiny(config_cls: Any, model_cls: Any, vocab_size: int, **kwargs: Any) -> Any:
    """A 2-layer, hidden-32 random-weight model (no hub), seeded."""
    import torch

    torch.manual_seed(0)
    config = config_cls(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        **kwargs,
    )
    return model_cls(config)


def tiny_llama(vocab_size: int = 32000, **kwargs: Any) -> Any:
    """A tiny random-weight ``LlamaForCausalLM``; ``kwargs`` go to ``LlamaConfig``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return _tiny(LlamaConfig, LlamaForCausalLM, vocab_size, **kwargs)


def tiny_phi3(vocab_size: int = 32000, **kwargs: Any) -> Any:
    """A tiny random-weight ``Phi3ForCausalLM``; ``kwargs`` go to ``Phi3Config``."""
    from transformers import Phi3Config, Phi3ForCausalLM

    kwargs.setdefault("pad_token_id", None)  # Phi3Config's default 32000 lies outside a 32000-row embedding
    return _tiny(Phi3Config, Phi3ForCausalLM, vocab_size, **kwargs)


def tiny_gpt2(vocab_size: int = 50368) -> Any:
    """A tiny random-weight ``GPT2LMHeadModel``."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4, n_positions=64))


def rows(model: Any) -> int:
    """The rows of a model's input embedding."""
    return model.get_input_embeddings().weight.shape[0]


def codes(report: Any, severity: str = "problem") -> list[str]:
    """The codes of an audit report's problems (or notes)."""
    return [f.code for f in (report.problems if severity == "problem" else report.notes)]


def finding(report: Any, code: str) -> Any:
    """The first finding with ``code``; fails the test when there is none, or when its severity is not the one the
    audit's table (``special_tokens.CHECKS``) declares for it."""
    from trl_formatkit.special_tokens import CHECKS

    check = {c.code: c for c in CHECKS}[code]
    found = [f for f in report.problems + report.notes if f.code == code]
    assert found, f"{code} not in {report.codes}"
    allowed = {check.severity} | ({"problem"} if check.problem_when else set())
    assert found[0].severity in allowed, f"{code} is a {found[0].severity}; the table says {sorted(allowed)}"
    return found[0]

def ref_tokenizer_folders(tokenizer_path, classes: dict[str, str], root: Path) -> dict[str, str]:
    """Copies of the shared tokenizers (never edit those) whose ``tokenizer_class`` transformers 4.x knows."""
    import shutil

    folders = {}
    for name, cls in classes.items():
        dst = root / name
        shutil.copytree(tokenizer_path(name), dst)
        config = json.loads((dst / "tokenizer_config.json").read_text())
        (dst / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": cls}))
        folders[name] = str(dst)
    return folders


def run_trl019(runner: Path, request: dict, cwd: Path) -> dict:
    """Run a ``tests/reference`` runner under the trl 0.19.1 interpreter on ``request``; its JSON answer.

    Skips, with the reason, where that interpreter is absent, has no trl, or has another trl than 0.19.x.
    """
    import os

    import pytest
    from book_facts import REF_PYTHON

    if not REF_PYTHON.is_file():
        pytest.skip(f"reference interpreter {REF_PYTHON} (trl 0.19.1, transformers 4.x) not found; set "
                    "FORMATKIT_REF_PYTHON to run the differential tests against trl 0.19")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run([str(REF_PYTHON), str(runner)], input=json.dumps(request), capture_output=True, text=True,
                          timeout=600, env=env, cwd=cwd)
    if proc.returncode != 0 and "No module named 'trl'" in proc.stderr:
        pytest.skip(f"{REF_PYTHON} has no trl: {proc.stderr.strip().splitlines()[-1]}")
    assert proc.returncode == 0, f"reference runner failed:\n{proc.stderr[-6000:]}"
    response = json.loads(proc.stdout)
    if not response["versions"]["trl"].startswith("0.19"):
        pytest.skip(f"{REF_PYTHON} has trl {response['versions']['trl']}, not 0.19.x")
    return response
