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
