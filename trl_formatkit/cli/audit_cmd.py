"""``trl-formatkit audit`` and ``trl-formatkit formats``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ._common import CLIError, _first_line, load_tokenizer, print_text


def add_audit_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tokenizer", help="a local tokenizer folder or a hub id (default: the bundled Phi-3-mini)")
    p.add_argument("--model", help="a local model folder (or its config.json): also check the embeddings and the "
                   "model's token ids; no weights are loaded")
    p.add_argument("--purpose", choices=["training", "generation"], default="training",
                   help="generation also flags right padding")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run_audit(args: argparse.Namespace, console: Any) -> int:
    from ..special_tokens import audit_tokenizer

    tokenizer = load_tokenizer(args.tokenizer)
    model = load_model_skeleton(args.model) if args.model else None
    report = audit_tokenizer(tokenizer, model, purpose=args.purpose)
    if args.json:
        console.print_json(json.dumps({**report.to_dict(), "exit_status": int(bool(report.problems))}, default=str))
    else:
        render_report(report, console)
    return 1 if report.problems else 0


def load_model_skeleton(where: str) -> Any:
    """The model a folder (or a ``config.json``) describes, on the meta device: shapes and configs, no weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    path = Path(where)
    folder = path.parent if path.is_file() else path
    if not (folder / "config.json").is_file():
        raise CLIError(f"--model {where!r}: no config.json there (give a local model folder or its config.json)")
    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError) as err:
        raise CLIError(f"--model {where!r}: cannot build the model from its config: {_first_line(err)}") from None
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(folder), local_files_only=True)
    return model


def render_report(report: Any, console: Any) -> None:
    """The audit as text that wraps at word boundaries (a narrow terminal never splits a word of the fix)."""
    from rich.table import Table
    from rich.text import Text

    tokens = Table(title=f"special tokens of {report.name}", title_justify="left")
    for column in ("token", "string", "id"):
        tokens.add_column(column, justify="right" if column == "id" else "left")
    for key, (text, token_id) in report.special_tokens.items():
        tokens.add_row(Text(key), Text(repr(text) if text is not None else "-"), Text(str(token_id) if token_id is not None else "-"))
    console.print(tokens)
    verdict = f"{len(report.problems)} problem(s), {len(report.notes)} note(s) ({report.purpose})"
    print_text(console, verdict if report.problems else f"no problems; {verdict}", "bold red" if report.problems else "bold green")
    for finding in [*report.problems, *report.notes]:
        label = "problem" if finding in report.problems else "note"
        console.print(Text.assemble((f"{label}: ", "red" if label == "problem" else "dim"), (finding.code, "bold")))
        console.print(Text(f"  {finding.message}"))
        if finding.values:
            console.print(Text(f"  values: {finding.values_text()}", style="dim"))
        if finding.fix:
            console.print(Text.assemble(("  fix: ", "green"), finding.fix))


def add_formats_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the formats as JSON")


def run_formats(args: argparse.Namespace, console: Any) -> int:
    """The registered formats: name, columns, aliases, and the plugin (with its distribution and version)."""
    from rich.text import Text

    rows = format_rows()
    if args.json:
        console.print_json(json.dumps(rows))
        return 0
    print_text(console, f"{len(rows)} registered formats (trl_formatkit.formats.names()):", style="bold")
    for row in rows:
        aliases = f"; aliases: {row['aliases']}" if row["aliases"] else ""
        console.print(Text.assemble((row["name"], "bold"), f"  columns: {row['columns']}{aliases}"))
        console.print(Text(f"  from {row['provider']}", style="dim"))
        if row["description"]:
            console.print(Text(f"  {row['description']}"))
    return 0


def format_rows() -> list[dict[str, str]]:
    from .. import __version__
    from ..formats import default_registry as formats
    from ..formats.core import normalize_name
    from ..plugins import plugin_info

    formats.names()  # loads the plugins
    infos = {info.name: info for info in plugin_info()}
    registry = getattr(formats, "_sources", {})  # normalized name -> "plugin 'name'"
    out = []
    for name in formats.names():
        fmt = formats.get(name)
        source = str(registry.get(normalize_name(name), "")).removeprefix("plugin ").strip("'")
        info = infos.get(source)
        if source == "builtin" or info is None and not source:
            provider = f"trl-formatkit {__version__} (built in)"
        elif info is not None and info.distribution:
            provider = f"{info.distribution} {info.version or ''} (plugin {source!r})".replace("  ", " ")
        else:
            provider = f"plugin {source!r}" if source else "registered at run time"
        out.append({"name": fmt.name, "columns": ", ".join(sorted(fmt.columns)), "aliases": ", ".join(fmt.aliases),
                    "provider": provider, "description": fmt.description})
    return out
