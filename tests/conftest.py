"""Shared fixtures.

Real tokenizers come from one place: the folder named by ``FORMATKIT_TOKENIZERS`` (CI and ``make`` set it to
``../shared/tokenizers``), else ``../shared/tokenizers`` beside the checkout. Tests that need one skip, with
the reason, where the folder is absent, so the suite passes on a machine that has only the project.
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import book_facts` (pytest runs in importlib mode)
TOKENIZER_NAMES = ("phi-3-mini", "llama-2", "gpt2", "qwen2", "llama-3")


def _share_the_cores_between_workers() -> None:
    """Under pytest-xdist (``make test`` runs ``-n``), give each worker its share of the cores.

    torch (OpenMP) and the tokenizers (rayon) start one thread per core in every process: two workers on two
    cores would run four busy threads and spin against each other (the trainer tests ran 2-4x slower). Set
    before torch is imported; inherited by the subprocesses the tests start (console script, torchrun).
    """
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = str(max(1, cores // workers))
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        os.environ.setdefault(name, threads)
    if "torch" in sys.modules:  # imported by a plugin before this file: too late for the variables
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


_share_the_cores_between_workers()

settings.register_profile(
    "dev", deadline=None, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.register_profile(
    "ci", deadline=None, max_examples=120, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


def tokenizers_dir() -> Path | None:
    """The folder of real tokenizers, or None where it is absent."""
    env = os.environ.get("FORMATKIT_TOKENIZERS")
    candidates = [Path(env)] if env else []
    candidates.append(REPO_ROOT.parent / "shared" / "tokenizers")
    for path in candidates:
        if (path / "phi-3-mini" / "tokenizer.json").is_file():
            return path
    return None


INIT_ONLY_ATTRIBUTES = ("_vocab", "_merges")


@functools.lru_cache(maxsize=None)
def _load(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizers_dir() / name))


@pytest.fixture(scope="session")
def tokenizer_path():
    """``tokenizer_path(name)`` -> the folder of a real tokenizer; skips where the tokenizers are absent."""
    root = tokenizers_dir()
    if root is None:
        pytest.skip(
            "real tokenizers not found: set FORMATKIT_TOKENIZERS to the shared/tokenizers folder "
            "(make and .ci/run do this)"
        )

    def get(name: str) -> Path:
        if name not in TOKENIZER_NAMES:
            raise ValueError(f"unknown test tokenizer {name!r}; known: {TOKENIZER_NAMES}")
        return root / name

    return get


@pytest.fixture
def load_tokenizer(tokenizer_path):
    """``load_tokenizer(name)`` -> a fresh copy of a real tokenizer (safe to modify in the test)."""
    import copy

    def get(name: str):
        tokenizer_path(name)  # validates the name
        base = _load(name)
        # the BPE vocab and merges transformers keeps in Python only build the backend in __init__: the copies
        # share them (half the copy time of qwen2/gpt2); the backend and everything else is copied
        init_only = {id(v): v for k, v in vars(base).items() if k in INIT_ONLY_ATTRIBUTES}
        return copy.deepcopy(base, init_only)

    return get
