"""What every benchmark shares: the versions line and the writer of its section of ``benchmarks/RESULTS.md``.

A section starts with its ``## name ...`` header and ends with ``<!-- end name -->``; rewriting it leaves the
other benchmarks' sections as they are. Imported by the benchmark scripts (``benchmarks/`` is their ``sys.path[0]``).
"""

from __future__ import annotations

import importlib
import platform
from pathlib import Path

__all__ = ["versions", "update_results", "section_end", "tee"]


def versions(*modules: str) -> dict[str, str]:
    """``{"python": "3.11.7", "numpy": "2.2.1", ...}`` for the importable ``modules`` ("absent" for the others)."""
    found = {"python": platform.python_version()}
    for name in modules:
        try:
            found[name] = str(importlib.import_module(name).__version__)
        except ImportError:
            found[name] = "absent"
    return found


def section_end(section: str) -> str:
    """The end marker of a section: ``<!-- end collate -->`` for ``"collate"``."""
    return f"<!-- end {section} -->"


def update_results(path: Path, section: str, text: str) -> None:
    """Replace ``section`` of the results file at ``path`` with ``text`` (its header to its end marker), or
    append it. ``text`` starts with the ``## section ...`` header and ends with :func:`section_end`."""
    path = Path(path)
    content = path.read_text() if path.exists() else "# Benchmark results\n"
    start = content.find(f"## {section} (")  # "## padded_vs_flat (GPU)", never "## padded_vs_flat at ..."
    if start < 0:
        start = content.find(f"## {section}\n")
    end_mark = section_end(section)
    if start >= 0:
        end = content.find(end_mark, start)
        if end < 0:
            raise SystemExit(f"{path}: found the '## {section}' header but not {end_mark!r}; fix it by hand")
        content = content[:start] + text.rstrip("\n") + content[end + len(end_mark) :]
    else:
        content = content.rstrip("\n") + "\n\n" + text
    path.write_text(content if content.endswith("\n") else content + "\n")


class tee:  # noqa: N801  (used like a function: log = tee(path))
    """A ``log(line)`` that prints each line and writes it to ``path`` at once (a run cut short keeps its lines).

    Usable as a context manager, which closes the file; a script that logs until it exits may leave that to the
    interpreter (every line is flushed as it is written).
    """

    def __init__(self, path: Path, mode: str = "w") -> None:
        self._sink = open(path, mode)  # noqa: SIM115  (open for the run's lifetime)

    def __call__(self, line: str) -> None:
        print(line, flush=True)
        self._sink.write(line + "\n")
        self._sink.flush()

    def close(self) -> None:
        self._sink.close()

    def __enter__(self) -> "tee":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
