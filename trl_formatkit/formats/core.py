"""``Format`` and ``FormatRegistry``: named adapters from a row schema to chat messages.

Imports neither ``datasets`` nor ``trl``.
"""

from __future__ import annotations

import difflib
import threading
import types
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import FormatKitKeyError, FormatKitTypeError, FormatKitValueError, warn
from ..hookspecs import normalize_name

if TYPE_CHECKING:  # pragma: no cover
    from ..plugins import PluginHost

__all__ = ["Format", "FormatRegistry", "columns_of", "normalize_name"]

#: How a third party adds a format; ends the "unknown" errors.
HOW_TO_ADD = (
    "To add a format: trl_formatkit.register_format(Format(name, columns, to_messages)), or ship a plugin "
    "(entry-point group 'trl_formatkit.plugins', hook formatkit_register_formats; see the README)."
)


@dataclass(frozen=True)
class Format:
    """A named adapter from one row schema to chat messages.

    Attributes:
        name: The format's name, e.g. ``"alpaca"``.
        columns: The keys a row must have, e.g. ``{"instruction", "input", "output"}`` (any iterable of strings;
            stored as a frozenset).
        to_messages: One row (a dict) -> ``[{"role": ..., "content": ...}, ...]``.
        description: One line for listings and error messages.
        aliases: Other names that resolve to this format (``"messages"`` for ``"chatml"``).
        priority: Breaks ties in detection: among matching formats, the highest priority wins, then the one
            needing the most columns. Fallback formats (``"text"``) use a negative priority.

    Example:
        >>> fmt = Format("qa", {"question", "answer"},
        ...              lambda row: [{"role": "user", "content": row["question"]},
        ...                           {"role": "assistant", "content": row["answer"]}])
        >>> sorted(fmt.columns)
        ['answer', 'question']
        >>> fmt.matches(["id", "question", "answer"])
        True
        >>> fmt.to_messages({"question": "2+2?", "answer": "4"})
        [{'role': 'user', 'content': '2+2?'}, {'role': 'assistant', 'content': '4'}]
        >>> fmt.with_column_mapping({"q": "question"}).to_messages({"q": "2+2?", "answer": "4"})[0]
        {'role': 'user', 'content': '2+2?'}
    """

    name: str
    columns: frozenset[str]
    to_messages: Callable[[dict], list[dict]] = field(repr=False)
    description: str = ""
    aliases: tuple[str, ...] = ()
    priority: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not normalize_name(self.name):
            raise FormatKitValueError(f"a format name must be a non-empty string, got {self.name!r}")
        if isinstance(self.columns, str):
            raise FormatKitTypeError(
                f"Format {self.name!r}: columns must be a collection of column names, got the string "
                f"{self.columns!r}; write {{{self.columns!r}}}"
            )
        columns = frozenset(self.columns)
        if not columns or not all(isinstance(c, str) and c for c in columns):
            raise FormatKitValueError(
                f"Format {self.name!r}: columns must be a non-empty set of column names, got {self.columns!r}"
            )
        if not callable(self.to_messages):
            raise FormatKitTypeError(
                f"Format {self.name!r}: to_messages must be a function row -> list of messages, got "
                f"{type(self.to_messages).__name__}"
            )
        aliases = (self.aliases,) if isinstance(self.aliases, str) else tuple(self.aliases)
        if not all(isinstance(a, str) and normalize_name(a) for a in aliases):
            raise FormatKitValueError(f"Format {self.name!r}: aliases must be non-empty strings, got {aliases!r}")
        object.__setattr__(self, "columns", columns)
        object.__setattr__(self, "aliases", aliases)

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        # columns pickled sorted: a frozenset pickles in its hash order, which differs from process to process
        # (PYTHONHASHSEED), and datasets fingerprints a map by pickling its function, so every process (and every
        # run) would miss the cache the main process wrote
        return (Format, (self.name, tuple(sorted(self.columns)), self.to_messages, self.description, self.aliases,
                         self.priority))

    def matches(self, columns: Iterable[str]) -> bool:
        """Whether a row or dataset with these columns has every column this format needs (extras are fine)."""
        return self.columns <= set(columns)

    def missing(self, columns: Iterable[str]) -> list[str]:
        """The columns this format needs that are absent, sorted."""
        return sorted(self.columns - set(columns))

    def with_column_mapping(self, column_mapping: Mapping[str, str]) -> Format:
        """This format reading from differently named columns.

        Args:
            column_mapping: ``{dataset_column: format_column}``, the direction of ``Dataset.rename_columns``.

        Returns:
            A new ``Format`` (same name) whose ``columns`` are the dataset's names and whose ``to_messages``
            renames a row's keys before converting it.
        """
        mapping = dict(column_mapping)
        if not mapping:
            return self
        inverse: dict[str, str] = {}
        for source, target in mapping.items():
            if target in inverse:
                raise FormatKitValueError(
                    f"column_mapping maps both {inverse[target]!r} and {source!r} to {target!r}; map one column "
                    "to each name"
                )
            inverse[target] = source
        columns = frozenset(inverse.get(c, c) for c in self.columns)
        return Format(
            name=self.name,
            columns=columns,
            to_messages=_RenamingConverter(self.to_messages, mapping),
            description=self.description,
            aliases=(),
            priority=self.priority,
        )

    def __str__(self) -> str:
        return f"{self.name} ({', '.join(sorted(self.columns))})"


@dataclass(frozen=True)
class _RenamingConverter:
    """``to_messages`` of a format whose columns are renamed (picklable, for ``map(num_proc=...)``)."""

    to_messages: Callable[[dict], list[dict]]
    mapping: Mapping[str, str]

    def __call__(self, row: Mapping[str, Any]) -> list[dict]:
        return self.to_messages(rename_keys(row, self.mapping))


def rename_keys(row: Mapping[str, Any], mapping: Mapping[str, str]) -> dict[str, Any]:
    """``row`` with its keys renamed by ``column_mapping`` (``{dataset_column: format_column}``)."""
    return {mapping.get(key, key): value for key, value in row.items()}


def columns_of(data: Any) -> list[str]:
    """The column names of a dataset, a ``DatasetDict`` (its first split), features, a row, or a list of names.

    Example:
        >>> columns_of({"prompt": "hi", "completion": "hello"})
        ['prompt', 'completion']
        >>> columns_of(["messages"])
        ['messages']
    """
    if isinstance(data, str):
        raise FormatKitTypeError(
            f"expected a dataset, a row or a list of column names, got the string {data!r}; pass [{data!r}]"
        )
    names = getattr(data, "column_names", None)
    if isinstance(names, Mapping):  # DatasetDict / IterableDatasetDict: {split: [names]}
        splits = list(names.values())
        if not splits:
            raise FormatKitValueError("the DatasetDict has no splits, so there are no columns to look at")
        return list(splits[0])
    if names is not None:
        return list(names)
    if hasattr(data, "column_names") and hasattr(data, "__iter__"):  # IterableDataset without known features
        first = next(iter(data), None)
        if first is None:
            raise FormatKitValueError("the dataset is empty, so its columns cannot be seen; pass format=NAME")
        return list(first)
    if isinstance(data, Mapping):
        return list(data)
    if isinstance(data, Iterable):
        names = list(data)
        if not all(isinstance(n, str) for n in names):
            raise FormatKitTypeError(
                f"expected column names (strings), got {names[:5]!r}; pass a dataset, a row dict, or names"
            )
        return names
    raise FormatKitTypeError(
        f"cannot read column names from {type(data).__name__}; pass a datasets.Dataset, a row dict, or a list of "
        "column names"
    )


class FormatRegistry:
    """A set of named formats, with aliases and detection.

    The default registry is ``trl_formatkit.formats`` (it loads the built-in and installed plugin formats on first
    use). A registry made here is empty unless ``plugins`` is given.

    Args:
        formats: Formats to register now.
        plugins: A :class:`~trl_formatkit.plugins.PluginHost` whose ``formatkit_register_formats`` hooks fill this
            registry on first use, or True for the default host.

    Example:
        >>> reg = FormatRegistry()
        >>> qa = reg.register(Format("qa", {"question", "answer"}, lambda row: [], aliases=("q-and-a",)))
        >>> reg.get("Q_and_A") is qa
        True
        >>> reg.names()
        ['qa']
        >>> reg.detect(["id", "question", "answer"]).name
        'qa'
        >>> reg.get("qz")
        Traceback (most recent call last):
        ...
        trl_formatkit.errors.FormatKitKeyError: unknown format 'qz'. Did you mean 'qa'? Known formats: qa (answer, question; alias: q-and-a). To add a format: ...
        >>> reg.register(Format("qa", {"q", "a"}, lambda row: []))
        Traceback (most recent call last):
        ...
        trl_formatkit.errors.FormatKitValueError: format name 'qa' is already registered (qa (answer, question), registered by the caller); pass replace=True to replace it
    """

    def __init__(self, formats: Iterable[Format] = (), *, plugins: PluginHost | bool = False) -> None:
        self._formats: dict[str, Format] = {}  # normalized name -> format
        self._aliases: dict[str, str] = {}  # normalized alias -> normalized name
        self._sources: dict[str, str] = {}  # normalized name -> who registered it
        self._lock = threading.RLock()
        if plugins is True:
            from ..plugins import default_host

            plugins = default_host
        self._host: PluginHost | None = plugins or None
        self._seen_generation = -1
        self._applied: set[str] = set()
        for fmt in formats:
            self.register(fmt)

    # -- plugin loading ------------------------------------------------------------------------------------------
    def _sync(self) -> None:
        """Call the ``formatkit_register_formats`` hook of every plugin not yet applied (first use loads them).

        All or nothing: an interrupt (``KeyboardInterrupt``, ``SystemExit``) midway restores the registry as it
        was, so the next use applies the plugins again instead of leaving some out for good.
        """
        host = self._host
        if host is None or host.generation == self._seen_generation:
            return
        with self._lock:
            host.load()
            if host.generation == self._seen_generation:
                return
            saved = (dict(self._formats), dict(self._aliases), dict(self._sources), set(self._applied))
            seen, self._seen_generation = self._seen_generation, host.generation  # first: get() in a hook is no loop
            try:
                for impl in host.hookimpls("formatkit_register_formats"):
                    if impl.plugin_name not in self._applied:
                        self._applied.add(impl.plugin_name)
                        self._apply(impl, host)
            except BaseException:
                self._formats, self._aliases, self._sources, self._applied = saved
                self._seen_generation = seen
                raise

    def _apply(self, impl: Any, host: PluginHost) -> None:
        staged: list[tuple[Format, bool]] = []
        source = f"plugin {impl.plugin_name!r}"

        def register(format: Format, *, replace: bool = False) -> Format:
            self._check(format, replace, staged=[f for f, _ in staged], source=source)
            staged.append((format, replace))
            return format

        try:
            impl.function(**{name: register for name in impl.argnames if name == "register"})
        except Exception as exc:  # noqa: BLE001 - a plugin's error must not stop the others
            host.record_failure(impl.plugin_name, "raised in its formatkit_register_formats hook", exc)
            return
        for fmt, replace in staged:
            owner = self._owner(normalize_name(fmt.name)) if replace else None
            if owner is not None and self._sources[owner] != source:
                warn(
                    f"{source} replaces the format {fmt.name!r} that {self._sources[owner]} registered "
                    f"({self._formats[owner]} becomes {fmt}); uninstall the plugin, or list the plugins to load in "
                    f"{host.env_var}, to keep the original"
                )
            self._add(fmt, replace=replace, source=source)

    # -- registration --------------------------------------------------------------------------------------------
    def _keys(self, fmt: Format) -> list[str]:
        return [normalize_name(fmt.name), *(normalize_name(a) for a in fmt.aliases)]

    def _owner(self, key: str) -> str | None:
        if key in self._formats:
            return key
        return self._aliases.get(key)

    def _check(self, fmt: Format, replace: bool, *, staged: Iterable[Format] = (), source: str = "") -> None:
        if not isinstance(fmt, Format):
            raise FormatKitTypeError(
                f"register() takes a trl_formatkit.Format, got {type(fmt).__name__} ({fmt!r}); build one with "
                "Format(name, columns, to_messages)"
            )
        keys = self._keys(fmt)
        if len(set(keys)) != len(keys):
            raise FormatKitValueError(f"format {fmt.name!r} lists a name twice among its name and aliases {keys}")
        for other in staged:
            clash = set(keys) & set(self._keys(other))
            if clash:
                raise FormatKitValueError(
                    f"{source or 'the caller'} registers {sorted(clash)[0]!r} twice ({other} and {fmt})"
                )
        if replace:
            for alias in keys[1:]:
                if alias in self._formats and alias != keys[0]:
                    raise FormatKitValueError(
                        f"alias {alias!r} of {fmt.name!r} is the name of the format {self._formats[alias].name!r}; "
                        "replace=True replaces a format of the same name, not another format: pick another alias"
                    )
            return
        for key in keys:
            owner = self._owner(key)
            if owner is None:
                continue
            what = "format name" if key == keys[0] else "alias"
            existing = self._formats[owner]
            raise FormatKitValueError(
                f"{what} {key!r} is already registered ({existing.name} ({', '.join(sorted(existing.columns))}), "
                f"registered by {self._sources[owner]}); pass replace=True to replace it"
            )

    def _add(self, fmt: Format, *, replace: bool, source: str) -> None:
        key, *aliases = self._keys(fmt)
        if replace:
            if key in self._aliases:  # the new name was another format's alias: that alias now means this one
                del self._aliases[key]
            old = self._formats.pop(key, None)
            if old is not None:
                for alias in [a for a, owner in self._aliases.items() if owner == key]:
                    del self._aliases[alias]
        self._formats[key] = fmt
        self._sources[key] = source
        for alias in aliases:
            self._aliases[alias] = key

    def register(self, format: Format, *, replace: bool = False) -> Format:
        """Add a format. Plugins load first, so a clash with a built-in or plugin format is seen now.

        Args:
            format: The :class:`Format`.
            replace: Replace a format of the same name (and take over its aliases) instead of raising.

        Returns:
            The format, so ``fmt = registry.register(Format(...))`` reads naturally.

        Raises:
            FormatKitValueError: the name or an alias is already taken and ``replace`` is False.
            FormatKitTypeError: ``format`` is not a :class:`Format`.
        """
        self._sync()
        with self._lock:
            self._check(format, replace)
            self._add(format, replace=replace, source="the caller")
        return format

    def unregister(self, name: str) -> Format:
        """Remove a format (by name or alias) and return it."""
        fmt = self.get(name)
        with self._lock:
            key = normalize_name(fmt.name)
            del self._formats[key]
            del self._sources[key]
            for alias in [a for a, owner in self._aliases.items() if owner == key]:
                del self._aliases[alias]
        return fmt

    # -- lookup --------------------------------------------------------------------------------------------------
    def get(self, name: str | Format) -> Format:
        """The format registered under ``name`` or one of its aliases (case, ``_`` and ``-`` do not matter).

        A :class:`Format` passes through unchanged.

        Raises:
            FormatKitKeyError: unknown name; the message gives the closest match, what is known, how to add one.
        """
        if isinstance(name, Format):
            return name
        if not isinstance(name, str):
            raise FormatKitTypeError(f"a format name must be a string or a Format, got {type(name).__name__}")
        self._sync()
        key = normalize_name(name)
        owner = self._owner(key)
        if owner is not None:
            return self._formats[owner]
        candidates = list(self._formats) + list(self._aliases)
        close = difflib.get_close_matches(key, candidates, n=1, cutoff=0.4)
        hint = ""
        if close:
            target = self._formats[self._owner(close[0])].name
            hint = f" Did you mean {close[0]!r}{'' if close[0] == target else f' (= {target!r})'}?"
        restricted = self._host.allowed_description() if self._host is not None else None
        note = f" ({restricted}.)" if restricted else ""
        raise FormatKitKeyError(
            f"unknown format {name!r}.{hint} Known formats: {self.describe()}.{note} {HOW_TO_ADD}"
        )

    def names(self) -> list[str]:
        """The registered format names, sorted (aliases not included; see :meth:`aliases`)."""
        self._sync()
        return sorted(fmt.name for fmt in self._formats.values())

    def aliases(self) -> dict[str, str]:
        """``{alias: format name}``."""
        self._sync()
        return {alias: self._formats[owner].name for alias, owner in sorted(self._aliases.items())}

    @property
    def registry(self) -> Mapping[str, Format]:
        """A read-only view ``{name: Format}`` (it follows later registrations)."""
        self._sync()
        return types.MappingProxyType(self._formats)

    def describe(self) -> str:
        """One line listing each format with its columns and aliases (used in error messages)."""
        self._sync()
        parts = []
        for key in sorted(self._formats):
            fmt = self._formats[key]
            aliases = [a for a, owner in self._aliases.items() if owner == key]
            extra = f"; alias{'es' if len(aliases) > 1 else ''}: {', '.join(sorted(aliases))}" if aliases else ""
            parts.append(f"{fmt.name} ({', '.join(sorted(fmt.columns))}{extra})")
        return ", ".join(parts) or "(none registered)"

    def __contains__(self, name: object) -> bool:
        if isinstance(name, Format):
            name = name.name
        if not isinstance(name, str):
            return False
        self._sync()
        return self._owner(normalize_name(name)) is not None

    def __getitem__(self, name: str) -> Format:
        return self.get(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        self._sync()
        return len(self._formats)

    def __repr__(self) -> str:
        loaded = self._host is None or self._seen_generation >= 0
        names = ", ".join(sorted(f.name for f in self._formats.values())) if loaded else "plugins not loaded yet"
        return f"FormatRegistry([{names}])"

    # -- detection -----------------------------------------------------------------------------------------------
    def matching(self, columns: Any) -> list[Format]:
        """Every format whose columns are all present, most specific first (priority, then number of columns)."""
        self._sync()
        seen = set(columns_of(columns))
        found = [fmt for fmt in self._formats.values() if fmt.matches(seen)]
        return sorted(found, key=lambda f: (-f.priority, -len(f.columns), f.name))

    def detect(self, data: Any, *, column_mapping: Mapping[str, str] | None = None) -> Format:
        """The most specific format whose columns the data has (extra columns are fine).

        Args:
            data: A ``datasets`` dataset, a ``DatasetDict`` (its first split), a row dict, or column names.
            column_mapping: ``{dataset_column: format_column}`` renames applied before matching.

        Returns:
            The matching :class:`Format` (the registered one, without the column mapping applied).

        Raises:
            FormatKitValueError: no format matches, or several match equally; the message lists the columns seen
                and the formats known.
        """
        seen = columns_of(data)
        renamed = _rename_columns(seen, column_mapping)
        found = self.matching(renamed)
        if not found:
            by_missing = sorted(self._formats.values(), key=lambda f: (len(f.missing(renamed)), f.name))
            closest = by_missing[0] if by_missing else None
            near = ""
            if closest is not None and len(closest.missing(renamed)) < len(closest.columns):
                near = (
                    f" Closest: {closest.name}, which also needs {', '.join(map(repr, closest.missing(renamed)))}."
                )
            raise FormatKitValueError(
                f"no known format matches the columns {seen}.{near} Known formats: {self.describe()}. Pass "
                "format=NAME with column_mapping={your_column: format_column} to map your columns (for example "
                "column_mapping={'question': 'prompt', 'answer': 'completion'}). " + HOW_TO_ADD
            )
        best = found[0]
        ties = [f for f in found[1:] if (f.priority, len(f.columns)) == (best.priority, len(best.columns))]
        if ties:
            listed = ", ".join(str(f) for f in [best, *ties])
            raise FormatKitValueError(
                f"the columns {seen} match several formats equally: {listed}. Pass format=NAME to choose one, or "
                "remove the columns of the others."
            )
        return best


def _rename_columns(columns: list[str], column_mapping: Mapping[str, str] | None) -> list[str]:
    if not column_mapping:
        return list(columns)
    missing = [c for c in column_mapping if c not in columns]
    if missing:
        raise FormatKitKeyError(
            f"column_mapping names column(s) {missing} that the data does not have; its columns are {columns}. "
            "column_mapping is {dataset_column: format_column}"
        )
    renamed = [column_mapping.get(c, c) for c in columns]
    duplicated = sorted({c for c in renamed if renamed.count(c) > 1})
    if duplicated:
        raise FormatKitValueError(
            f"column_mapping renames a column to {duplicated[0]!r}, but the data already has a column of that name "
            f"(columns: {columns}); drop or rename that column first"
        )
    return renamed
