"""What every command shares: loading a tokenizer, one-line errors, warnings printed as text (never markup)."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

BUNDLED_TOKENIZER = Path(__file__).resolve().parent.parent / "data" / "phi-3-mini"
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")


class CLIError(Exception):
    """A bad argument: printed as one line (``trl-formatkit <command>: <message>``), exit status 2."""


def hub_offline() -> bool:
    """True where the Hugging Face hub must not be asked (``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE`` set)."""
    return any(os.environ.get(v, "").strip().lower() in {"1", "true", "yes", "on"}
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))


def load_tokenizer(path: str | Path | None = None) -> Any:
    """A tokenizer from a local folder, the bundled Phi-3-mini one, or a hub id where the hub is reachable."""
    from transformers import AutoTokenizer

    where = str(path) if path else str(BUNDLED_TOKENIZER)
    if Path(where).is_dir():
        try:
            return AutoTokenizer.from_pretrained(where, local_files_only=True)
        except (OSError, ValueError) as err:
            raise CLIError(f"no tokenizer in the folder {where!r}: {_first_line(err)}") from None
    if not _HUB_ID.match(where) or Path(where).suffix:
        raise CLIError(f"no tokenizer folder at {where!r} (give a local folder, or a hub id such as owner/name)")
    if hub_offline():
        raise CLIError(
            f"no tokenizer folder at {where!r}, and the Hugging Face hub is off here (HF_HUB_OFFLINE=1): "
            "give a local folder"
        )
    try:
        return AutoTokenizer.from_pretrained(where)
    except Exception as err:  # noqa: BLE001 - any hub failure becomes one line
        raise CLIError(f"could not load the tokenizer {where!r} from the Hugging Face hub: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]


def unescape(text: str) -> str:
    r"""Turn ``\n``, ``\t``, ``\uXXXX`` written in an argument into the characters; other text stays as it is.

    Example:
        >>> unescape(r"café 日本\n<|im_start|>assistant\n")
        'café 日本\n<|im_start|>assistant\n'
    """
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


def print_text(console: Any, text: str, style: str | None = None) -> None:
    """Print ``text`` as it is (data never read as rich markup: ``[/INST]`` stays ``[/INST]``)."""
    from rich.text import Text

    console.print(Text(text, style=style or ""), soft_wrap=False)


@contextmanager
def caught_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Record every warning (shown later as text, without file paths)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def warning_lines(caught: list[warnings.WarningMessage]) -> list[str]:
    """Each distinct warning message once, with how many times it came when more than once."""
    counts: dict[str, int] = {}
    for w in caught:
        counts[str(w.message)] = counts.get(str(w.message), 0) + 1
    return [m if n == 1 else f"{m} (x{n})" for m, n in counts.items()]
