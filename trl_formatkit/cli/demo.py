"""``trl-formatkit demo``: the book chapter's collator examples, live, narrated from what actually happened."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .. import __version__
from ._common import caught_warnings, load_tokenizer, print_text, warning_lines

YODA = [
    ("The birch canoe slid on the smooth planks.", "On the smooth planks, the birch canoe slid. Yes, hrrrm."),
    ("Glue the sheet to the dark blue background.", "Glue the sheet to the dark blue background, you must."),
]
CHAT = [("Hello", "How are you?"), ("I'm fine! You?", "I'm fine too!")]
BOOK_CHAT = "<|user|>Hello\n<|assistant|>How are you?\n<|user|>I'm fine! You?\n<|assistant|>I'm fine too!\n<|endoftext|>"
NEXT = "next: trl-formatkit inspect --help"
WHERE = "(the command is .venv/bin/trl-formatkit; or `source .venv/bin/activate` first; or python -m trl_formatkit)"


def templates_for(tok: Any) -> tuple[str, str, str]:
    """The response and instruction templates that fit the tokenizer, and how they were chosen."""
    vocab = tok.get_vocab()
    if "<|assistant|>" in vocab and "<|user|>" in vocab:
        return "<|assistant|>", "<|user|>", "the book's Phi-3 markers"
    if tok.chat_template:
        user = [{"role": "user", "content": "Hi"}]
        plain = tok.apply_chat_template(user, tokenize=False)
        prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
        if prompt.startswith(plain) and prompt[len(plain):].strip():
            response = prompt[len(plain):]
            return response, response.replace("assistant", "user"), "this tokenizer's chat template"
    return "<|assistant|>", "<|user|>", "the book's Phi-3 markers, as plain text (no chat template here)"


def _render(tok: Any, pairs: list[tuple[str, str]]) -> str:
    """The pairs as one chat through the tokenizer's chat template, or as the book's Phi-3 text without one."""
    if tok.chat_template:
        turns = [({"role": "user", "content": p}, {"role": "assistant", "content": c}) for p, c in pairs]
        return tok.apply_chat_template([m for turn in turns for m in turn], tokenize=False)
    text = "".join(f"<|user|>\n{p}<|end|>\n<|assistant|>\n{c}<|end|>\n" for p, c in pairs)
    return text + (tok.eos_token or "")


def collate(collator: Any, rows: list, console: Any, quiet: bool = False) -> tuple[Any, int]:
    """Collate, print the warnings it gave as plain lines (no file paths), return the batch and tokens trained."""
    with caught_warnings() as caught:
        batch = collator(rows)
    for line in [] if quiet else warning_lines(caught):
        print_text(console, f"   warning: {line}", style="yellow")
    return batch, int((batch["labels"] != collator.ignore_index).sum())


def _trained(n: int) -> str:
    return f"{n} tokens trained" if n else "nothing trained"


def demo(tokenizer_path: str | None = None, console: Any = None) -> int:
    """The book chapter's collator examples on a tokenizer: the audit, masks, the context pitfall, padding-free."""
    from rich.console import Console
    from rich.rule import Rule

    console = console or Console()
    tok = load_tokenizer(tokenizer_path)
    name = Path(tokenizer_path).name if tokenizer_path else "phi-3-mini (bundled)"
    console.print(Rule(f"trl-formatkit {__version__} demo · tokenizer: {name} · offline"))
    _audit(tok, console)
    response, instruction, chosen = templates_for(tok)
    rows = _single_turn(tok, response, chosen, console)
    _multi_turn(tok, response, instruction, console)
    _context_pitfall(tok, console)
    _padding_free(tok, response, rows, console)
    console.print(Rule(NEXT))
    print_text(console, WHERE)
    return 0


def _audit(tok: Any, console: Any) -> None:
    from ..special_tokens import audit_tokenizer, fix_special_tokens
    from .audit_cmd import render_report

    console.print("\n[bold]1. The tokenizer[/bold]: audit_tokenizer(tok)")
    report = audit_tokenizer(tok)
    render_report(report, console)
    if report.problems:
        with caught_warnings():
            fix_special_tokens(tok)
        print_text(console, f"   fix_special_tokens(tok): PAD is now {tok.pad_token!r} ({tok.pad_token_id}), EOS "
                   f"{tok.eos_token!r} ({tok.eos_token_id}); problems left: {len(audit_tokenizer(tok).problems)}")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # display only: the collator's labels come from lengths, so EOS is still trained


def _single_turn(tok: Any, response: str, chosen: str, console: Any) -> list:
    from ..collators import DataCollatorForCompletionOnlyLM
    from ..views import show_trained

    how = "its chat template" if tok.chat_template else "the book's Phi-3 text"
    console.print(f"\n[bold]2. Single turn[/bold] (the book's yoda rows, {how}, {tok.padding_side} padding)")
    print_text(console, f"   DataCollatorForCompletionOnlyLM(response_template={response!r}, tokenizer=tok): {chosen}")
    rows = [tok(_render(tok, [pair])) for pair in YODA]
    batch, n = collate(DataCollatorForCompletionOnlyLM(response, tokenizer=tok), rows, console)
    print_text(console, f"   {_trained(n)}" + ("" if n else ": the template is not in these rows (see the warning)"))
    show_trained(batch, tok, console=console)
    return rows


def _multi_turn(tok: Any, response: str, instruction: str, console: Any) -> None:
    from ..collators import DataCollatorForCompletionOnlyLM
    from ..views import show_trained

    console.print("\n[bold]3. Multi-turn[/bold]: the response template alone trains from its last occurrence on")
    chat = [tok(BOOK_CHAT if response == "<|assistant|>" else _render(tok, CHAT))]  # the book's dummy chat
    batch, alone = collate(DataCollatorForCompletionOnlyLM(response, tokenizer=tok), chat, console)
    show_trained(batch, tok, console=console)
    multi = DataCollatorForCompletionOnlyLM(response, instruction_template=instruction, tokenizer=tok)
    batch, both = collate(multi, chat, console)
    if both > alone:
        print_text(console, f"   ... add instruction_template={instruction!r} and every answer is trained "
                   f"({both} tokens instead of {alone}):")
    else:
        print_text(console, f"   ... with instruction_template={instruction!r}: {_trained(both)} "
                   f"(alone: {_trained(alone)}):")
    show_trained(batch, tok, console=console)


def _context_pitfall(tok: Any, console: Any) -> None:
    from ..collators import DataCollatorForCompletionOnlyLM
    from ..views import show_trained

    alone = tok.encode("### Answer:", add_special_tokens=False)
    byo = [tok(f"### Question: {p}\n### Answer: {c}{tok.eos_token}") for p, c in YODA[:1]]
    ids = list(byo[0]["input_ids"])
    same = any(ids[i : i + len(alone)] == alone for i in range(len(ids)))
    console.print("\n[bold]4. The context pitfall[/bold]")
    print_text(console, f'   "### Answer:" alone encodes to {alone}; inside this row it '
               + ("encodes the same." if same else "encodes to something else."))
    exact, n = collate(DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok, match_in_context=False), byo, console)
    if n:
        print_text(console, f"   trl 0.19's exact matching (match_in_context=False): {n} tokens trained (this "
                   "tokenizer has no pitfall here)")
    else:
        print_text(console, "   trl 0.19's exact matching (match_in_context=False): nothing trained (the warning above)")
    show_trained(exact, tok, console=console)
    batch, n = collate(DataCollatorForCompletionOnlyLM("### Answer:", tokenizer=tok), byo, console)
    print_text(console, f"   the default, match_in_context=True, finds it as it tokenizes in context: {_trained(n)}")
    show_trained(batch, tok, console=console)


def _padding_free(tok: Any, response: str, rows: list, console: Any) -> None:
    from ..collators import DataCollatorForCompletionOnlyLM
    from ..views import show_trained

    console.print("\n[bold]5. Padded vs padding-free[/bold] (the rows of section 2)")
    padded, n_padded = collate(DataCollatorForCompletionOnlyLM(response, tokenizer=tok), rows, console, quiet=True)
    flat, n_flat = collate(DataCollatorForCompletionOnlyLM(response, tokenizer=tok, padding_free=True), rows, console,
                           quiet=True)  # the warnings of section 2, if any, again
    n_real = int(padded["attention_mask"].sum())
    print_text(console, f"   padded: input_ids {tuple(padded['input_ids'].shape)} = {padded['input_ids'].numel()} "
               f"slots, {n_real} real tokens ({1 - n_real / padded['input_ids'].numel():.0%} padding); {_trained(n_padded)}")
    print_text(console, f"   padding-free: input_ids {tuple(flat['input_ids'].shape)}, keys {sorted(flat)}, "
               f"cu_seq_lens_q {flat['cu_seq_lens_q'].tolist()}, max_length_q {flat['max_length_q']}; {_trained(n_flat)}"
               + (" (the same tokens)" if n_flat == n_padded else ""))
    if not n_padded:
        print_text(console, "   (nothing trained either way: the template of section 2 is not in these rows)")
    show_trained(flat, tok, console=console)
