"""Special-token hygiene: find and fix what makes a model never stop, train on nothing, or crash on a new token.

The book chapter's "Tokenizer" and "BYOT" sections, turned into tools, one module per concern:

- ``vocab``: lookups and special-token sets the others share (no public API).
- ``report``: :class:`AuditFinding`, :class:`AuditReport` (text, HTML, ``to_dict()`` for JSON).
- ``probe``: what a chat template really writes (end-of-turn token, ``{% generation %}`` coverage, double BOS,
  :func:`template_markers`).
- ``audit``: :func:`audit_tokenizer`, a table of small checks (``CHECKS``) each declaring its code, severity and
  fix; ``.problems`` break training or generation, ``.notes`` are worth knowing.
- ``fix``: :func:`fix_special_tokens`, the chapter's ``modify_tokenizer`` done right (EOS kept; PAD from UNK,
  else an unused reserved token, else a new ``<pad>``; never invents a BOS nobody writes); :class:`FixSummary`.
- ``safe``: :class:`SafeSpecialTokensMixin` / :func:`safe_tokenizer`, a tokenizer that refuses PAD = EOS.
- ``chat_templates``: :func:`add_chat_template` and the named templates :data:`CHAT_TEMPLATES`.
- ``embeddings``: :func:`resize_embeddings` (grow only, keep the multiple, sync ids; returns the untrained ids)
  and :func:`new_token_lora_kwargs`.
- ``chat_format``: :func:`setup_chat_format`, trl's removed function, restored without PAD = EOS or shrinking.

The package imports without torch, transformers, trl or datasets; each function imports what it needs.

Example:
    >>> from trl_formatkit._toy import toy_tokenizer
    >>> from trl_formatkit.special_tokens import audit_tokenizer, fix_special_tokens
    >>> audit_tokenizer(fix_special_tokens(toy_tokenizer(pad_token="</s>"))).problems[0].code
    'chat-template-missing'
"""

from __future__ import annotations

from .audit import CHECKS, audit_tokenizer
from .chat_format import setup_chat_format
from .chat_templates import CHAT_TEMPLATES, add_chat_template
from .embeddings import new_token_lora_kwargs, resize_embeddings
from .fix import FixSummary, fix_special_tokens
from .probe import starts_with_double_bos, template_markers
from .report import AuditFinding, AuditReport
from .safe import SafeSpecialTokensMixin, safe_tokenizer

__all__ = [
    "AuditFinding",
    "AuditReport",
    "CHECKS",
    "audit_tokenizer",
    "fix_special_tokens",
    "FixSummary",
    "SafeSpecialTokensMixin",
    "safe_tokenizer",
    "add_chat_template",
    "CHAT_TEMPLATES",
    "template_markers",
    "starts_with_double_bos",
    "resize_embeddings",
    "new_token_lora_kwargs",
    "setup_chat_format",
]
