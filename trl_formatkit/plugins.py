"""Plugin discovery and loading (pluggy + entry points).

Plugins are found through the entry-point group ``trl_formatkit.plugins``. Each entry point names a module (or an
instance, never a class) that implements hooks from :mod:`trl_formatkit.hookspecs`, such as
``formatkit_register_formats(register)``. Nothing is imported at ``import trl_formatkit``: plugins load the first time
a registry needs them (``formats.get``, ``detect_format``, ``to_messages``, ...), or when :func:`load_plugins` is
called.

- The built-in formats register through the same hook, from :mod:`trl_formatkit.formats.builtin`; they always load.
- A plugin that fails (at import, at registration, or inside its hook) is named in one :class:`FormatKitWarning`, and
  the other plugins still load.
- A hook name the project does not define (a misspelling, such as ``formatkit_register_format``) is caught by
  pluggy's ``check_pending()`` and the plugin is skipped, with a warning that suggests the right name.
- The environment variable ``FORMATKIT_PLUGINS`` restricts which installed plugins load: unset, all of them load;
  set to a comma-separated list of entry-point (or distribution) names, only those load; set to an empty string,
  none load (the built-ins still do).

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
import sys
import threading
import types
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import pluggy

from . import hookspecs
from .errors import FormatKitTypeError, FormatKitValueError, FormatKitWarning
from .hookspecs import PROJECT_NAME

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


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _external_stacklevel() -> int:
    """The ``stacklevel`` that points a warning at the first caller outside trl_formatkit (the user's line)."""
    frame = sys._getframe(1)  # the function that calls warnings.warn: stacklevel 1
    level = 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


def _normalize(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


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
        self.pm = pluggy.PluginManager(PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        #: Grows whenever a plugin is added, so registries know when to call the new ones.
        self.generation = 0
        self._lock = threading.RLock()
        self._loaded = False
        self._info: dict[str, PluginInfo] = {}

    # -- loading -------------------------------------------------------------------------------------------------
    def load(self) -> None:
        """Register the built-ins and every allowed entry point, once. Failures become warnings."""
        if self._loaded:
            return
        with self._lock:
            if self._loaded:
                return
            # Set first: a plugin that touches a registry while it is being imported must not recurse into here.
            self._loaded = True
            for name, module_name in self.builtins:
                # A broken built-in is our bug, not a user's plugin: let it raise.
                self._register(importlib.import_module(module_name), name)
                self._info[name] = PluginInfo(name=name, target=module_name)
            self._load_entry_points()

    def _allowed(self) -> set[str] | None:
        value = os.environ.get(self.env_var)
        if value is None:
            return None
        return {_normalize(part) for part in value.split(",") if part.strip()}

    def _load_entry_points(self) -> None:
        from importlib.metadata import entry_points

        allowed = self._allowed()
        seen: set[str] = set()
        found = []
        for ep in entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            version = dist.version if dist is not None else None
            found.append((dist_name or "", ep.name, ep, dist_name, version))
        for _, _, ep, dist_name, version in sorted(found, key=lambda item: (item[0], item[1])):
            info = PluginInfo(name=ep.name, target=ep.value, distribution=dist_name, version=version)
            seen.update({_normalize(ep.name), _normalize(dist_name or "")})
            if allowed is not None and not ({_normalize(ep.name), _normalize(dist_name or "")} & allowed):
                self._info.setdefault(ep.name, PluginInfo(**{**info.__dict__, "status": "disabled"}))
                continue
            if ep.name in self._info or self.pm.has_plugin(ep.name):
                previous = self._info.get(ep.name)
                by = f" by {previous.distribution}" if previous and previous.distribution else ""
                self._fail(
                    info,
                    "is not loaded",
                    FormatKitValueError(f"the plugin name {ep.name!r} is already taken{by}"),
                    record=False,
                )
                continue
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - any error in third-party code is isolated
                self._fail(info, "failed to import", exc)
                continue
            try:
                self._register(plugin, ep.name)
            except Exception as exc:  # noqa: BLE001
                self._fail(info, "failed to register", exc)
                continue
            self._info[ep.name] = info
        if allowed:
            unknown = sorted(allowed - seen)
            if unknown:
                installed = sorted({_normalize(name) for _, name, *_ in found}) or ["(none)"]
                warnings.warn(
                    f"{self.env_var} names plugin(s) {', '.join(unknown)} that are not installed; installed "
                    f"trl-formatkit plugins: {', '.join(installed)}. Check the spelling, or pip install the "
                    "package that provides it.",
                    FormatKitWarning,
                    stacklevel=_external_stacklevel(),
                )

    def _register(self, plugin: Any, name: str) -> str:
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
            and self.pm.parse_hookimpl_opts(plugin, attr) is None
        ]
        if unmarked:
            raise FormatKitValueError(
                f"plugin {name!r} defines {', '.join(unmarked)} without the @hookimpl marker, so pluggy would "
                "ignore it; decorate it: `from trl_formatkit import hookimpl` then `@hookimpl` above the def"
            )
        registered = self.pm.register(plugin, name=name)
        if registered is None:  # blocked
            raise FormatKitValueError(f"plugin {name!r} is blocked in this plugin manager")
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as exc:
            self.pm.unregister(plugin)
            raise FormatKitValueError(self._unknown_hook_message(name, plugin, exc)) from exc
        if not self.pm.get_hookcallers(plugin):
            self.pm.unregister(plugin)
            raise FormatKitValueError(
                f"plugin {name!r} implements no trl-formatkit hook; known hooks: {', '.join(self._hook_names())}. "
                "Mark the function with @hookimpl (from trl_formatkit import hookimpl)"
            )
        self.generation += 1
        return registered

    def _hook_names(self) -> list[str]:
        return sorted(name for name in dir(hookspecs) if name.startswith(_HOOK_PREFIX))

    def _unknown_hook_message(self, name: str, plugin: Any, exc: pluggy.PluginValidationError) -> str:
        known = self._hook_names()
        unknown = sorted(
            attr
            for attr in dir(plugin)
            if attr not in known and self.pm.parse_hookimpl_opts(plugin, attr) is not None
        )
        hints = []
        for hook in unknown:
            close = difflib.get_close_matches(hook, known, n=1)
            hints.append(f"{hook!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        what = ", ".join(hints) or str(exc)
        return (
            f"plugin {name!r} implements hook {what}, which trl-formatkit does not define; known hooks: "
            f"{', '.join(known)}"
        )

    def _fail(self, info: PluginInfo, stage: str, exc: BaseException, *, record: bool = True) -> None:
        error = f"{type(exc).__name__}: {exc}"
        if record:
            self._info[info.name] = PluginInfo(**{**info.__dict__, "status": "failed", "error": error})
        origin = info.target
        if info.distribution:
            origin += f" from {info.distribution} {info.version}"
        fix = (
            f"pip uninstall {info.distribution}, or" if info.distribution else "remove it, or"
        ) + f" list the plugins to load in {self.env_var}"
        warnings.warn(
            f"trl-formatkit plugin {info.name!r} ({origin}) {stage} and is skipped: {error}. "
            f"The other plugins still load. To fix: report it to the plugin's authors; to silence: {fix}.",
            FormatKitWarning,
            stacklevel=_external_stacklevel(),
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
