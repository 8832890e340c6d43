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
