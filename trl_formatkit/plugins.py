"""Plugin discovery and loading (pluggy + entry points).

Plugins are found through the entry-point group ``trl_formatkit.plugins``. Each entry point names a module (or an
instance, never a class) that implements hooks from :mod:`trl_formatkit.hookspecs`, such as
``formatkit_register_formats(register)``. Nothing is imported at ``import trl_formatkit``: plugins load the first time
a registry needs them (``formats.get``, ``detect_format``, ``to_messages``, ...), or when :func:`load_plugins` is
called.

- The built-in formats register through the same hook, from :mod:`trl_formatkit.formats.builtin`; they always load.
- A plugin that fails (at import, at registration, or inside its hook) is named in one :class:`FormatKitWarning`, and
  the other plugins still load.
- A hook name the project does not define (a misspelling, such as ``formatkit_register_format``: what pluggy's
  ``check_pending()`` rejects) skips the plugin, with a warning that suggests the right name.
- The environment variable ``FORMATKIT_PLUGINS`` restricts which installed plugins load: unset, all of them load;
  set to a comma-separated list of entry-point (or distribution) names, only those load; set to an empty string,
  none load (the built-ins still do).

Loading leans on pluggy: each entry point is loaded and registered by ``load_setuptools_entrypoints`` (so
``get_plugin_manager().list_plugin_distributions()`` lists them), excluded ones are ``set_blocked``. Loading is
all-or-nothing and thread-safe: a ``KeyboardInterrupt`` / ``SystemExit`` during the first load leaves no partial
registry (the next use loads again), and a thread that asks while another loads waits for the whole load.

Security: like any entry-point system, every installed distribution that declares the group is imported on
first use, including a ``*.dist-info`` folder in the current directory (it is on ``sys.path`` when Python runs
from there). ``FORMATKIT_PLUGINS=`` (set and empty) turns third-party plugins off; the built-ins still load.

This module imports only :mod:`pluggy` and the standard library.

Example:
    >>> from trl_formatkit import plugins
    >>> plugins.ENTRY_POINT_GROUP, plugins.PLUGINS_ENV_VAR
    ('trl_formatkit.plugins', 'FORMATKIT_PLUGINS')
    >>> host = plugins.PluginHost(group="no.such.group")  # a private host: built-ins only
    >>> [(p.name, p.status) for p in host.plugin_info()]
    [('builtin', 'loaded')]
"""

from __future__ import annotations

import difflib
import importlib
import os
import threading
import types
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

import pluggy

from . import hookspecs
from .errors import FormatKitTypeError, FormatKitValueError, warn
from .hookspecs import PROJECT_NAME, normalize_name

__all__ = [
    "ENTRY_POINT_GROUP",
    "PLUGINS_ENV_VAR",
    "BUILTIN_PLUGINS",
    "PluginInfo",
    "PluginHost",
    "default_host",
    "load_plugins",
    "get_plugin_manager",
    "register_plugin",
    "plugin_info",
]

#: The entry-point group third-party packages use to announce plugins.
ENTRY_POINT_GROUP = "trl_formatkit.plugins"

#: Environment variable restricting which installed plugins load (comma-separated names; empty: none).
PLUGINS_ENV_VAR = "FORMATKIT_PLUGINS"

#: Plugins that always load, as (name, module): the built-in formats use the same hook as everyone else.
BUILTIN_PLUGINS: tuple[tuple[str, str], ...] = (("builtin", "trl_formatkit.formats.builtin"),)

_HOOK_PREFIX = "formatkit_"


@dataclass(frozen=True)
class PluginInfo:
    """What became of one plugin.

    Attributes:
        name: The entry-point name (``"builtin"`` for the built-in formats).
        target: What the entry point points at (``"package.module"``), or the plugin's repr.
        distribution: The installed distribution that provides it (None for built-ins and runtime plugins).
        version: That distribution's version.
        status: ``"loaded"``; ``"failed"`` (a warning said why); ``"disabled"`` (excluded by ``FORMATKIT_PLUGINS``).
        error: Why it failed, if it did.
    """

    name: str
    target: str
    distribution: str | None = None
    version: str | None = None
    status: Literal["loaded", "failed", "disabled"] = "loaded"
    error: str | None = None


def _plugin_key(name: str) -> str:
    """Entry-point and distribution names compare like distribution names (PEP 503: ``.`` and ``_`` read as ``-``)."""
    return normalize_name(name.replace(".", "-"))


def _entry_points(group: str) -> list[tuple[Any, PluginInfo]]:
    """The group's entry points with what we know of each, in the order pluggy's loader visits them."""
    import importlib.metadata

    found = []
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == group:
                info = PluginInfo(ep.name, ep.value, dist.metadata["Name"], dist.version)
                found.append((ep, info))
    return found


def _hook_names() -> list[str]:
    return sorted(name for name in dir(hookspecs) if name.startswith(_HOOK_PREFIX))


def _unknown_hooks(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    """Marked hooks that no spec defines, each with the closest known hook: what pluggy's ``check_pending()``
    rejects, for this plugin alone (check_pending looks at every plugin at once)."""
    known = _hook_names()
    opts = {attr: pm.parse_hookimpl_opts(plugin, attr) for attr in dir(plugin) if attr not in known}
    unknown = sorted(attr for attr, o in opts.items() if o is not None and not o.get("optionalhook"))
    close = {hook: difflib.get_close_matches(hook, known, n=1) for hook in unknown}
    return [f"{hook!r}" + "".join(f" (did you mean {c!r}?)" for c in close[hook]) for hook in unknown]


def _validate(pm: pluggy.PluginManager, plugin: Any, name: str) -> None:
    """Raise (and leave ``plugin`` unregistered) unless it is a module or an instance with marked, known hooks."""
    try:
        if isinstance(plugin, type):
            raise FormatKitTypeError(
                f"plugin {name!r} points at the class {plugin.__qualname__}; point the entry point at a module, or "
                "at an instance (pluggy registers what the entry point loads and would call the hooks unbound)"
            )
        unmarked = [
            attr
            for attr in dir(plugin)
            if attr.startswith(_HOOK_PREFIX)
            and callable(getattr(plugin, attr, None))
            and pm.parse_hookimpl_opts(plugin, attr) is None
        ]
        if unmarked:
            raise FormatKitValueError(
                f"plugin {name!r} defines {', '.join(unmarked)} without the @hookimpl marker, so pluggy would "
                "ignore it; decorate it: `from trl_formatkit import hookimpl` then `@hookimpl` above the def"
            )
        unknown = _unknown_hooks(pm, plugin)
        if unknown:
            raise FormatKitValueError(
                f"plugin {name!r} implements hook {', '.join(unknown)}, which trl-formatkit does not define; known "
                f"hooks: {', '.join(_hook_names())}"
            )
        if not pm.get_hookcallers(plugin):
            raise FormatKitValueError(
                f"plugin {name!r} implements no trl-formatkit hook; known hooks: {', '.join(_hook_names())}. "
                "Mark the function with @hookimpl (from trl_formatkit import hookimpl)"
            )
    except Exception:
        if pm.is_registered(plugin):
            pm.unregister(plugin)
        raise


class PluginHost:
    """A pluggy plugin manager plus entry-point discovery, loaded once on first use.

    :data:`default_host` serves the default format registry; create your own (with another entry-point ``group``)
    for an isolated registry, as the tests do.

    Args:
        group: The entry-point group to discover.
        builtins: ``(name, module)`` pairs that always load, before any entry point.
        env_var: The environment variable that restricts which entry points load.

    Example:
        >>> import types
        >>> from trl_formatkit import Format, hookimpl
        >>> host = PluginHost(group="no.such.group", builtins=())
        >>> plugin = types.SimpleNamespace()
        >>> @hookimpl
        ... def formatkit_register_formats(register):
        ...     register(Format("qa", {"question", "answer"}, lambda row: []))
        >>> plugin.formatkit_register_formats = formatkit_register_formats
        >>> host.register(plugin, name="qa")
        'qa'
        >>> [impl.plugin_name for impl in host.hookimpls("formatkit_register_formats")]
        ['qa']
    """

    def __init__(
        self,
        group: str = ENTRY_POINT_GROUP,
        builtins: Iterable[tuple[str, str]] = BUILTIN_PLUGINS,
        env_var: str = PLUGINS_ENV_VAR,
    ) -> None:
        self.group = group
        self.builtins = tuple(builtins)
        self.env_var = env_var
        self.pm = self._new_manager()
        #: Grows whenever a plugin is added (or a load is rolled back), so registries know when to look again.
        self.generation = 0
        self._lock = threading.RLock()
        self._loaded = False
        self._loading = False
        self._info: dict[str, PluginInfo] = {}

    @staticmethod
    def _new_manager() -> pluggy.PluginManager:
        pm = pluggy.PluginManager(PROJECT_NAME)
        pm.add_hookspecs(hookspecs)
        return pm

    # -- loading -------------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Register the built-ins and every allowed entry point, once and as a whole. Failures become warnings.

        Another thread calling meanwhile waits for the whole load; an interrupt (``KeyboardInterrupt``,
        ``SystemExit``) rolls everything back, so the next call loads again from scratch.
        """
        if self._loaded:
            return
        with self._lock:
            if self._loaded or self._loading:  # done, or a plugin being imported touched a registry: no recursion
                return
            self._loading = True
            try:
                for name, module_name in self.builtins:
                    # A broken built-in is our bug, not a user's plugin: let it raise.
                    self._register(importlib.import_module(module_name), name)
                    self._info[name] = PluginInfo(name=name, target=module_name)
                self._load_entry_points()
                self._loaded = True
            except BaseException:
                self.pm, self._info = self._new_manager(), {}
                self.generation += 1
                raise
            finally:
                self._loading = False

    def _allowed(self) -> set[str] | None:
        value = os.environ.get(self.env_var)
        if value is None:
            return None
        return {_plugin_key(part) for part in value.split(",") if part.strip()}

    def _load_entry_points(self) -> None:
        found = _entry_points(self.group)
        wanted = self._select(found)
        failed = []
        while True:  # pluggy loads them all; one that fails is blocked, named in a warning, and the rest go on
            try:
                self.pm.load_setuptools_entrypoints(self.group)
                break
            except Exception as exc:  # noqa: BLE001 - any error in third-party code is isolated
                culprit = getattr(exc, "plugin", None)
                name = self.pm.get_name(culprit) if culprit is not None else None
                if name is None:  # ep.load() failed: the first wanted one pluggy has not registered yet
                    name = next(n for n in wanted if not self.pm.has_plugin(n))
                else:
                    self.pm.unregister(culprit)
                self.pm.set_blocked(name)
                failed.append(name)
                stage = "failed to register" if isinstance(exc, pluggy.PluginValidationError) else "failed to import"
                self._fail(wanted[name], stage, exc)
        for name in failed:
            self.pm.unblock(name)
        for name, info in wanted.items():
            plugin = self.pm.get_plugin(name)
            if plugin is None:
                continue
            try:
                _validate(self.pm, plugin, name)
            except Exception as exc:  # noqa: BLE001
                self._fail(info, "failed to register", exc)
                continue
            self._info[name] = info
            self.generation += 1
        self._warn_unknown_allowed(found)

    def _select(self, found: list[tuple[Any, PluginInfo]]) -> dict[str, PluginInfo]:
        """Block the entry points ``FORMATKIT_PLUGINS`` excludes, name the duplicates; return the wanted ones."""
        allowed = self._allowed()
        wanted: dict[str, PluginInfo] = {}
        for _, info in found:
            if allowed is not None and not {_plugin_key(info.name), _plugin_key(info.distribution or "")} & allowed:
                self.pm.set_blocked(info.name)
                self._info.setdefault(info.name, replace(info, status="disabled"))
            elif info.name in wanted or info.name in self._info or self.pm.has_plugin(info.name):
                previous = wanted.get(info.name) or self._info.get(info.name)
                by = f" by {previous.distribution}" if previous and previous.distribution else ""
                error = FormatKitValueError(f"the plugin name {info.name!r} is already taken{by}")
                self._fail(info, "is not loaded", error, record=False)
            else:
                wanted[info.name] = info
        return wanted

    def _warn_unknown_allowed(self, found: list[tuple[Any, PluginInfo]]) -> None:
        allowed = self._allowed()
        if not allowed:
            return
        seen = {_plugin_key(n) for _, info in found for n in (info.name, info.distribution or "")}
        unknown = sorted(allowed - seen)
        if unknown:
            installed = sorted({_plugin_key(info.name) for _, info in found}) or ["(none)"]
            warn(
                f"{self.env_var} names plugin(s) {', '.join(unknown)} that are not installed; installed "
                f"trl-formatkit plugins: {', '.join(installed)}. Check the spelling, or pip install the package "
                "that provides it."
            )

    def _register(self, plugin: Any, name: str) -> str:
        if isinstance(plugin, type):
            _validate(self.pm, plugin, name)  # raises: a class is never registered
        registered = self.pm.register(plugin, name=name)
        if registered is None:  # blocked
            raise FormatKitValueError(f"plugin {name!r} is blocked in this plugin manager")
        _validate(self.pm, plugin, name)
        self.generation += 1
        return registered

    def _fail(self, info: PluginInfo, stage: str, exc: BaseException, *, record: bool = True) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if record:
            self._info[info.name] = replace(info, status="failed", error=error)
        origin = info.target + (f" from {info.distribution} {info.version}" if info.distribution else "")
        fix = (
            f"pip uninstall {info.distribution}, or" if info.distribution else "remove it, or"
        ) + f" list the plugins to load in {self.env_var}"
        warn(
            f"trl-formatkit plugin {info.name!r} ({origin}) {stage} and is skipped: {error}. "
            f"The other plugins still load. To fix: report it to the plugin's authors; to silence: {fix}."
        )

    # -- public API ----------------------------------------------------------------------------------------------
    def register(self, plugin: Any, name: str | None = None) -> str:
        """Register a plugin (a module or an instance) now, without an entry point.

        Registries call its hooks the next time they are used. Unlike entry points, problems raise here.

        Args:
            plugin: A module or an instance with ``@hookimpl`` functions.
            name: The plugin's name (default: pluggy's canonical name, the module name for a module).

        Returns:
            The name it was registered under.

        Raises:
            FormatKitTypeError: ``plugin`` is a class.
            FormatKitValueError: a hook is unknown (misspelt) or unmarked, none is implemented, or the name is taken.
        """
        self.load()
        with self._lock:
            if name is None:
                name = self.pm.get_canonical_name(plugin)
            if self.pm.has_plugin(name):
                raise FormatKitValueError(
                    f"a plugin named {name!r} is already registered; pass another name= or unregister it first"
                )
            try:
                registered = self._register(plugin, name)
            except ValueError as exc:
                if isinstance(exc, FormatKitValueError):
                    raise
                raise FormatKitValueError(f"plugin {name!r} cannot be registered: {exc}") from exc
            target = plugin.__name__ if isinstance(plugin, types.ModuleType) else repr(plugin)
            self._info[registered] = PluginInfo(name=registered, target=target)
            return registered

    def hookimpls(self, hook_name: str) -> list[pluggy.HookImpl]:
        """The implementations of one hook, in registration order (built-ins first), after loading."""
        self.load()
        caller = getattr(self.pm.hook, hook_name, None)
        if caller is None:
            return []
        return [impl for impl in caller.get_hookimpls() if not (impl.hookwrapper or impl.wrapper)]

    def record_failure(self, name: str, stage: str, exc: BaseException) -> None:
        """Name a plugin whose hook raised in a warning (once per call) and mark it failed."""
        info = self._info.get(name) or PluginInfo(name=name, target=name)
        self._fail(info, stage, exc)

    def plugin_info(self) -> list[PluginInfo]:
        """Every plugin seen (loaded, failed or disabled), built-ins first."""
        self.load()
        return list(self._info.values())

    def allowed_description(self) -> str | None:
        """A sentence about ``FORMATKIT_PLUGINS`` when it restricts loading, else None (for error messages)."""
        value = os.environ.get(self.env_var)
        if value is None:
            return None
        return f"{self.env_var}={value!r} restricts which installed plugins load"


#: The host behind the default registry ``trl_formatkit.formats``.
default_host = PluginHost()


def load_plugins() -> None:
    """Load the built-in and installed plugins now (otherwise they load on first use). Safe to call twice."""
    default_host.load()


def get_plugin_manager() -> pluggy.PluginManager:
    """The default pluggy plugin manager, with the plugins loaded."""
    default_host.load()
    return default_host.pm


def register_plugin(plugin: Any, name: str | None = None) -> str:
    """Register a plugin module or instance with the default host (see :meth:`PluginHost.register`)."""
    return default_host.register(plugin, name)


def plugin_info() -> list[PluginInfo]:
    """What became of each plugin of the default host (see :class:`PluginInfo`)."""
    return default_host.plugin_info()
