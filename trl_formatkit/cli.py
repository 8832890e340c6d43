"""``trl-formatkit``: a thin command line over the library (parse, call, render with rich).

Commands:
    demo      an offline tour on the book chapter's examples (bundled Phi-3-mini tokenizer)
    audit     check a tokenizer's special tokens and chat template; each problem with its fix
    inspect   show which tokens a collator trains, for your tokenizer, templates and rows
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__

BUNDLED_TOKENIZER = Path(__file__).parent / "data" / "phi-3-mini"


def load_tokenizer(path: str | Path | None = None) -> Any:
    """A tokenizer from a local folder, or the bundled Phi-3-mini one (never the hub)."""
    from transformers import AutoTokenizer

    folder = Path(path) if path else BUNDLED_TOKENIZER
    if not folder.is_dir():
        raise SystemExit(f"trl-formatkit: no tokenizer folder at {str(folder)!r} (give a local folder)")
    return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)


# -- demo -----------------------------------------------------------------------------------------------------
YODA = [
    ("The birch canoe slid on the smooth planks.", "On the smooth planks, the birch canoe slid. Yes, hrrrm."),
    ("Glue the sheet to the dark blue background.", "Glue the sheet to the dark blue background, you must."),
]
DUMMY_CHAT = "<|user|>Hello\n<|assistant|>How are you?\n<|user|>I'm fine! You?\n<|assistant|>I'm fine too!\n<|endoftext|>"


def demo(tokenizer_path: str | None = None, console: Any = None) -> int:
    """The book chapter's collator examples, live: what is trained, what the pitfalls look like."""
    from rich.console import Console
    from rich.rule import Rule

    from .collators import DataCollatorForCompletionOnlyLM
    from .errors import FormatKitWarning
    from .views import show_trained
    from .special_tokens import audit_tokenizer, fix_special_tokens

    console = console or Console()
    tok = load_tokenizer(tokenizer_path)
    name = Path(tokenizer_path).name if tokenizer_path else "phi-3-mini (bundled)"
    console.print(Rule(f"trl-formatkit {__version__} demo · tokenizer: {name} · offline"))

    console.print("\n[bold]1. The tokenizer[/bold]: audit_tokenizer(tok)")
    report = audit_tokenizer(tok)
    console.print(report)
    if report.problems:
        fix_special_tokens(tok)
        console.print(
            f"   fix_special_tokens(tok): PAD is now {tok.pad_token!r} ({tok.pad_token_id}), EOS {tok.eos_token!r} "
            f"({tok.eos_token_id}); problems left: {len(audit_tokenizer(tok).problems)}"
        )

    console.print("\n[bold]2. Single turn[/bold] (the book's yoda rows, chat template, left padding)")
    console.print('   DataCollatorForCompletionOnlyLM(response_template="<|assistant|>", tokenizer=tok)')
    texts = [
        tok.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": c}], tokenize=False)
        if tok.chat_template
        else f"<|user|>\n{p}<|end|>\n<|assistant|>\n{c}<|end|>\n{tok.eos_token}"
        for p, c in YODA
    ]
    rows = [tok(t) for t in texts]
    collator = DataCollatorForCompletionOnlyLM(response_template="<|assistant|>", tokenizer=tok)
    show_trained(collator(rows), tok, console=console)

    console.print("\n[bold]3. Multi-turn[/bold]: the response template alone trains only the last answer ...")
    chat = [tok(DUMMY_CHAT)]
    show_trained(collator(chat), tok, console=console)
    console.print('   ... add instruction_template="<|user|>" and every answer is trained:')
    multi = DataCollatorForCompletionOnlyLM("<|assistant|>", instruction_template="<|user|>", tokenizer=tok)
    show_trained(multi(chat), tok, console=console)

    console.print(
        '\n[bold]4. The context pitfall[/bold]: "### Answer:" alone encodes to '
        f"{tok.encode('### Answer:', add_special_tokens=False)}, inside text to something else"
    )
    byo = [tok(f"### Question: {p}\n### Answer: {c}{tok.eos_token}") for p, c in YODA[:1]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FormatKitWarning)
        exact = DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok, match_in_context=False)(byo)
    console.print("   trl 0.19's exact matching (match_in_context=False): nothing trained, and this warning:")
    for w in caught:
        console.print(f"[yellow]{w.message}[/yellow]", highlight=False)
    show_trained(exact, tok, console=console)
    console.print("   the default, match_in_context=True, finds it as it tokenizes in context:")
    show_trained(DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok)(byo), tok, console=console)

    console.print("\n[bold]5. Padded vs padding-free[/bold] (same rows, same trained tokens)")
    flat = DataCollatorForCompletionOnlyLM("<|assistant|>", tokenizer=tok, padding_free=True)(rows)
    padded = collator(rows)
    n_real = int(padded["attention_mask"].sum())
    console.print(
        f"   padded: input_ids {tuple(padded['input_ids'].shape)} = {padded['input_ids'].numel()} slots, "
        f"{n_real} real tokens ({1 - n_real / padded['input_ids'].numel():.0%} padding)"
    )
    console.print(
        f"   padding-free: input_ids {tuple(flat['input_ids'].shape)}, keys {sorted(flat)}, "
        f"cu_seq_lens_q {flat['cu_seq_lens_q'].tolist()}, max_length_q {flat['max_length_q']}"
    )
    show_trained(flat, tok, console=console)
    console.print(Rule("next: trl-formatkit inspect --help"))
    return 0


# -- inspect --------------------------------------------------------------------------------------------------
def _read_rows(args: argparse.Namespace, tok: Any) -> list[str]:
    texts: list[str] = list(args.text or [])
    if args.file:
        for n, line in enumerate(Path(args.file).read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if args.field in row and isinstance(row[args.field], str):
                texts.append(row[args.field])
            elif args.field in row and isinstance(row[args.field], list):  # messages
                texts.append(tok.apply_chat_template(row[args.field], tokenize=False))
            else:
                raise SystemExit(f"trl-formatkit: line {n} of {args.file} has no {args.field!r} field: {sorted(row)}")
            if len(texts) >= args.rows:
                break
    if not texts:
        raise SystemExit("trl-formatkit inspect: give rows with --text TEXT or --file ROWS.jsonl")
    return texts


def inspect_command(args: argparse.Namespace, console: Any = None) -> int:
    from rich.console import Console

    from .collators import DataCollatorForCompletionOnlyLM
    from .errors import FormatKitError
    from .views import show_trained

    console = console or Console()
    tok = load_tokenizer(args.tokenizer)
    if tok.pad_token is None and not args.padding_free:
        tok.pad_token = tok.unk_token or tok.eos_token  # display only: labels come from lengths
    texts = [t.encode("utf-8").decode("unicode_escape") if args.unescape else t for t in _read_rows(args, tok)]
    try:
        collator = DataCollatorForCompletionOnlyLM(
            args.response_template,
            args.instruction_template or None,
            tokenizer=tok,
            end_template=args.end_template,
            padding_free=args.padding_free,
            match_in_context=not args.exact,
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            batch = collator([tok(t) for t in texts])
    except FormatKitError as err:
        console.print(f"[red]{err}[/red]", highlight=False)
        return 2
    for w in caught:
        console.print(f"[yellow]{w.message}[/yellow]", highlight=False)
    show_trained(batch, tok, console=console)
    return 1 if caught else 0


def audit_command(args: argparse.Namespace, console: Any = None) -> int:
    from rich.console import Console

    from .special_tokens import audit_tokenizer

    console = console or Console()
    report = audit_tokenizer(load_tokenizer(args.tokenizer), purpose=args.purpose)
    console.print(report)
    return 1 if report.problems else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trl-formatkit", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"trl-formatkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p_demo = sub.add_parser("demo", help="an offline tour on the book chapter's examples")
    p_demo.add_argument("--tokenizer", help="a local tokenizer folder (default: the bundled Phi-3-mini)")

    p_audit = sub.add_parser("audit", help="check a tokenizer's special tokens and chat template (exit 1 on problems)")
    p_audit.add_argument("--tokenizer", help="a local tokenizer folder (default: the bundled Phi-3-mini)")
    p_audit.add_argument("--purpose", choices=["training", "generation"], default="training",
                         help="generation also flags right padding")

    p_inspect = sub.add_parser("inspect", help="show which tokens the collator trains")
    p_inspect.add_argument("--tokenizer", help="a local tokenizer folder (default: the bundled Phi-3-mini)")
    p_inspect.add_argument("--response-template", required=True, help='e.g. "<|assistant|>" or "### Answer:"')
    p_inspect.add_argument("--instruction-template", action="append", help="repeat for several (user, system)")
    p_inspect.add_argument("--end-template", help='e.g. "<|end|>"')
    p_inspect.add_argument("--padding-free", action="store_true", help="flatten the batch into one row")
    p_inspect.add_argument("--exact", action="store_true", help="trl 0.19's exact template matching")
    p_inspect.add_argument("--text", action="append", help="a formatted row (repeat for several)")
    p_inspect.add_argument("--file", help="a JSONL file of rows")
    p_inspect.add_argument("--field", default="text", help="the JSONL field: text, or messages (chat template)")
    p_inspect.add_argument("--rows", type=int, default=4, help="how many rows of --file (default 4)")
    p_inspect.add_argument("--unescape", action="store_true", help=r"turn \n in --text into newlines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        return demo(args.tokenizer)
    if args.command == "inspect":
        return inspect_command(args)
    if args.command == "audit":
        return audit_command(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
