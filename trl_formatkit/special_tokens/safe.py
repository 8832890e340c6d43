"""A tokenizer that refuses ``pad_token = eos_token``: :class:`SafeSpecialTokensMixin` and :func:`safe_tokenizer`."""

from __future__ import annotations

from typing import Any

from ..errors import FormatKitTypeError, FormatKitValueError
from .audit import audit_tokenizer
from .fix import fix_special_tokens
from .report import AuditReport
from .vocab import Vocab, pad_candidate, require_tokenizer, tok

__all__ = ["SafeSpecialTokensMixin", "safe_tokenizer"]


class SafeSpecialTokensMixin:
    """A tokenizer mixin that refuses to make PAD the EOS token, with ``.audit()`` and ``.fix()`` shortcuts.

    ``tokenizer.pad_token = tokenizer.eos_token`` (and ``pad_token_id = eos_token_id``,
    ``add_special_tokens({"pad_token": eos})``, or an EOS set to the PAD) raises
    :class:`~trl_formatkit.errors.FormatKitValueError` naming the token to use instead. ``save_pretrained``
    writes the plain tokenizer class, so the folder loads with ``AutoTokenizer.from_pretrained`` anywhere, fixes
    included. Use :func:`safe_tokenizer` to make an existing tokenizer safe, or put the mixin first in your own
    class: ``class MyTokenizer(SafeSpecialTokensMixin, PreTrainedTokenizerFast): ...``.

    Example:
        >>> from trl_formatkit._toy import toy_tokenizer
        >>> tok = safe_tokenizer(toy_tokenizer())
        >>> tok.pad_token = tok.eos_token
        Traceback (most recent call last):
        ...
        trl_formatkit.errors.FormatKitValueError: refusing pad_token = '</s>': ...
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        object.__setattr__(self, "_formatkit_guard", True)

    def __setattr__(self, key: str, value: Any) -> None:
        if key in ("pad_token", "pad_token_id", "eos_token", "eos_token_id") and value is not None:
            self._formatkit_refuse_pad_eos(key, value)
        super().__setattr__(key, value)

    def _formatkit_refuse_pad_eos(self, key: str, value: Any) -> None:
        if not self.__dict__.get("_formatkit_guard", False):
            return  # still inside __init__ / from_pretrained: loading is never refused (audit() reports it)
        as_token = (
            self.convert_ids_to_tokens(int(value)) if key.endswith("_id") else str(value)  # type: ignore[attr-defined]
        )
        if key.startswith("pad"):
            other = tok(self.eos_token)  # type: ignore[attr-defined]
            if other is None or as_token != other:
                return
        else:
            other = tok(self.pad_token)  # type: ignore[attr-defined]
            current = tok(self.eos_token)  # type: ignore[attr-defined]
            if other is None or as_token != other or as_token == current:
                return
        try:
            vocab = Vocab(self)
            unk = tok(self.unk_token)  # type: ignore[attr-defined]
            candidate, reason = pad_candidate(self, vocab, unk=unk, eos=as_token)
            where = f"id {vocab[candidate]}" if candidate in vocab else "a new token"
            instead = f"tokenizer.pad_token = {candidate!r} ({reason}, {where})"
        except Exception:  # noqa: BLE001 - never let the advice hide the refusal
            instead = "fix_special_tokens(tokenizer)"
        if key.startswith("pad"):
            what = f"PAD would be the EOS token {as_token!r}"
            advice = f"Use {instead}, or call tokenizer.fix() (fix_special_tokens)"
        else:
            what = f"EOS would be the PAD token {as_token!r}"
            advice = "Change the PAD first (tokenizer.fix() picks one), or keep this EOS"
        raise FormatKitValueError(
            f"refusing {key} = {str(value)!r}: {what}, and a collator that masks the pad id would never train the "
            f"model to stop. {advice}"
        )

    def audit(self, model: Any = None, **kwargs: Any) -> AuditReport:
        """``audit_tokenizer(self, model, **kwargs)``."""
        return audit_tokenizer(self, model, **kwargs)

    def fix(self, **kwargs: Any) -> Any:
        """``fix_special_tokens(self, **kwargs)``; returns self."""
        return fix_special_tokens(self, **kwargs)

    def save_pretrained(self, *args: Any, **kwargs: Any) -> Any:
        # tokenizer_config.json names the class to load: write the plain class, not the safe one
        cls = type(self)
        plain = _plain_class(cls)
        object.__setattr__(self, "__class__", plain)
        try:
            return plain.save_pretrained(self, *args, **kwargs)
        finally:
            object.__setattr__(self, "__class__", cls)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # pickling (datasets.map with num_proc, deepcopy) rebuilds the plain tokenizer, then makes it safe again
        cls = type(self)
        if not getattr(cls, "_formatkit_dynamic", False):
            return super().__reduce_ex__(protocol)
        plain = _plain_class(cls)
        object.__setattr__(self, "__class__", plain)
        try:
            reduced = self.__reduce_ex__(protocol)
        finally:
            object.__setattr__(self, "__class__", cls)
        return (_rebuild_safe, (reduced[0], reduced[1]), *reduced[2:])


_SAFE_CLASSES: dict[type, type] = {}


def _plain_class(cls: type) -> type:
    for base in cls.__mro__[1:]:
        if not issubclass(base, SafeSpecialTokensMixin):
            return base
    raise FormatKitTypeError(f"{cls.__name__} has no tokenizer class under SafeSpecialTokensMixin")


def _safe_class(plain: type) -> type:
    cls = _SAFE_CLASSES.get(plain)
    if cls is None:
        cls = type(
            f"Safe{plain.__name__}",
            (SafeSpecialTokensMixin, plain),
            {"__module__": __name__, "_formatkit_dynamic": True, "__doc__": plain.__doc__},
        )
        _SAFE_CLASSES[plain] = cls
    return cls


def _rebuild_safe(func: Any, args: Any) -> Any:
    obj = func(*args)
    object.__setattr__(obj, "__class__", _safe_class(type(obj)))
    return obj


def safe_tokenizer(tokenizer: Any) -> Any:
    """Make an existing tokenizer instance refuse PAD = EOS (any tokenizer class), in place.

    The instance's class becomes a subclass of its class and :class:`SafeSpecialTokensMixin`, so
    ``isinstance(tokenizer, OriginalClass)`` still holds, everything else behaves the same, and
    ``save_pretrained`` writes the original class name (plain ``AutoTokenizer`` loads the folder).

    Args:
        tokenizer: a Hugging Face tokenizer instance.

    Returns:
        The same object, now safe (calling it twice is harmless).

    Raises:
        FormatKitTypeError: ``tokenizer`` is not a tokenizer instance.

    Example:
        >>> from trl_formatkit._toy import toy_tokenizer
        >>> tok = safe_tokenizer(toy_tokenizer(pad_token="</s>"))   # loading is never refused
        >>> tok.audit().codes[:1]
        ['pad-equals-eos']
        >>> tok.fix().pad_token
        '<unk>'
    """
    require_tokenizer(tokenizer)
    if isinstance(tokenizer, type):
        raise FormatKitTypeError(
            "safe_tokenizer() takes a tokenizer instance, not a class; for a class write "
            "class MyTokenizer(SafeSpecialTokensMixin, TheClass): ..."
        )
    if not isinstance(tokenizer, SafeSpecialTokensMixin):
        object.__setattr__(tokenizer, "__class__", _safe_class(type(tokenizer)))
    object.__setattr__(tokenizer, "_formatkit_guard", True)
    return tokenizer
