"""trl-formatkit: see which tokens your fine-tuning data trains; check tokenizers and whole datasets.

A thin command line over the library: it parses, calls library functions and renders with rich.

Commands:
    demo      an offline tour on the book chapter's examples (bundled Phi-3-mini tokenizer)
    audit     check a tokenizer's special tokens and chat template; each problem with its fix
    inspect   show which tokens are trained for your tokenizer and rows, and check a whole dataset
    formats   the registered dataset formats and the plugin that provides each

Exit status: 0 when all is well; 1 when something will train wrongly (``inspect``: rows that train nothing or
are cut before their answer; ``audit``: problems, not notes); 2 on a bad argument (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from .. import __version__
from ._common import BUNDLED_TOKENIZER, CLIError, load_tokenizer
from .demo import demo

__all__ = ["main", "build_parser", "demo", "load_tokenizer", "BUNDLED_TOKENIZER", "CLIError"]

EPILOG = """exit status: 0 all is well; 1 something will train wrongly (inspect: rows that train nothing or are cut
before their answer; audit: problems, not notes); 2 a bad argument (one line on stderr).
The command lives in the virtualenv: .venv/bin/trl-formatkit, or after `source .venv/bin/activate`; also
`python -m trl_formatkit`."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (``trl-formatkit inspect: ...``) and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .audit_cmd import add_audit_arguments, add_formats_arguments
    from .inspect_cmd import add_arguments as add_inspect_arguments

    raw = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog="trl-formatkit", description=__doc__.split("\n\n")[0],
                     epilog=EPILOG, formatter_class=raw)
    parser.add_argument("--version", action="version", version=f"trl-formatkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    p_demo = sub.add_parser("demo", help="an offline tour on the book chapter's examples", epilog=EPILOG,
                            formatter_class=raw)
    p_demo.add_argument("--tokenizer", help="a local tokenizer folder (default: the bundled Phi-3-mini)")
    add_audit_arguments(sub.add_parser(
        "audit", help="check a tokenizer's special tokens and chat template (exit 1 on problems, not on notes)",
        epilog=EPILOG, formatter_class=raw))
    add_inspect_arguments(sub.add_parser(
        "inspect", help="show the trained tokens of the first rows, then check the whole dataset",
        description="Show which tokens are trained in the first rows, then check every row: rows that train "
        "nothing, rows cut before their answer at --max-length, the trained share, lengths, padding.",
        epilog=EPILOG, formatter_class=raw))
    add_formats_arguments(sub.add_parser("formats", help="the registered dataset formats and who provides each",
                                         epilog=EPILOG, formatter_class=raw))
    return parser


def main(argv: Sequence[str] | None = None, console: Any = None) -> int:
    """Run a command; return its exit status (the console script exits with it)."""
    from rich.console import Console

    from ..errors import FormatKitError

    args = build_parser().parse_args(argv)
    console = console or Console()
    try:
        return _dispatch(args, console)
    except (CLIError, FormatKitError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"trl-formatkit {args.command}: {text}", file=sys.stderr)
        return 1 if type(err).__name__ == "TemplateNotFoundError" else 2
    except KeyboardInterrupt:
        print(f"trl-formatkit {args.command}: interrupted", file=sys.stderr)
        return 130


def _dispatch(args: argparse.Namespace, console: Any) -> int:
    if args.command == "demo":
        return demo(args.tokenizer, console=console)
    if args.command == "inspect":
        from .inspect_cmd import run

        return run(args, console)
    if args.command == "audit":
        from .audit_cmd import run_audit

        return run_audit(args, console)
    from .audit_cmd import run_formats

    return run_formats(args, console)

