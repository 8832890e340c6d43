"""Plugins: pluggy hooks, entry-point discovery (for real), isolation of failing plugins, ``FORMATKIT_PLUGINS``.

The entry-point tests pip-install real packages: ``tests/plugins/formatkit_example_plugin`` (formats ``qa`` and
``oasst``), ``tests/plugins/formatkit_broken_plugin`` (five plugins that fail in five ways) and the README's
``examples/format_plugin`` (``dolly``). They are installed with ``pip install --target`` into a temporary folder, not
into the running venv: the venv is shared by the suite (and, on a dev machine, by other people's runs), where an
installed broken plugin would turn every first use of the registry into warnings, which ``filterwarnings = error``
makes failures. The checks then run in a fresh interpreter whose ``sys.path`` has that folder, exactly as a
site-packages install is seen, and which never imports the plugin modules itself: the formats can only come
from the entry points.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pluggy
import pytest

from trl_formatkit import Format, FormatRegistry, hookimpl
from trl_formatkit.errors import FormatKitTypeError, FormatKitValueError, FormatKitWarning
from trl_formatkit.plugins import BUILTIN_PLUGINS, ENTRY_POINT_GROUP, PLUGINS_ENV_VAR, PluginHost
from helpers import run_python_json

REPO_ROOT = Path(__file__).resolve().parent.parent
PLUGIN_SOURCES = (
    REPO_ROOT / "tests" / "plugins" / "formatkit_example_plugin",
    REPO_ROOT / "tests" / "plugins" / "formatkit_broken_plugin",
    REPO_ROOT / "examples" / "format_plugin",
)
BROKEN = {
    "broken-import": "failed to import",
    "broken-hook": "raised in its formatkit_register_formats hook",
    "misspelt-hook": "failed to register",
    "duplicate-name": "raised in its formatkit_register_formats hook",
    "class-target": "failed to register",
}
NO_GROUP = "trl_formatkit.tests.no-such-group"  # a host with no entry points: only what a test registers


# -- in-process: the hook, the host, the registry ---------------------------------------------------------------
def _plugin(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for attr, fn in hooks.items():
        setattr(module, attr, fn)
    return module


def _registering(*fmts: Format):
    @hookimpl
    def formatkit_register_formats(register):
        for fmt in fmts:
            register(fmt)

    return formatkit_register_formats


def _fmt(name: str, *columns: str, **kwargs) -> Format:
    return Format(name, set(columns) or {name}, lambda row: [{"role": "user", "content": "x"}], **kwargs)


def test_hookimpl_is_public_and_marks_for_this_project():
    import trl_formatkit
    from trl_formatkit.hookspecs import PROJECT_NAME

    assert trl_formatkit.hookimpl is hookimpl
    assert PROJECT_NAME == "trl_formatkit" and ENTRY_POINT_GROUP == "trl_formatkit.plugins"
    assert PLUGINS_ENV_VAR == "FORMATKIT_PLUGINS"
    assert BUILTIN_PLUGINS == (("builtin", "trl_formatkit.formats.builtin"),)


def test_builtins_register_through_the_same_hook():
    host = PluginHost(group=NO_GROUP)
    impls = host.hookimpls("formatkit_register_formats")
    assert [impl.plugin_name for impl in impls] == ["builtin"]
    import trl_formatkit.formats.builtin as builtin

    assert impls[0].plugin is builtin
    reg = FormatRegistry(plugins=host)
    assert reg.names() == ["alpaca", "chatml", "instruction", "sharegpt", "text"]
    assert [(p.name, p.status) for p in host.plugin_info()] == [("builtin", "loaded")]


def test_plugins_load_on_first_use_not_at_construction():
    host = PluginHost(group=NO_GROUP)
    reg = FormatRegistry(plugins=host)
    assert not host._loaded and repr(reg) == "FormatRegistry([plugins not loaded yet])"
    assert "chatml" in reg
    assert host._loaded


def test_check_pending_rejects_a_misspelt_hook():
    @hookimpl
    def formatkit_register_format(register):  # no "s"
        register(_fmt("never"))

    host = PluginHost(group=NO_GROUP, builtins=())
    plugin = _plugin("misspelt", formatkit_register_format=formatkit_register_format)
    # what pluggy itself does, which the host relies on
    pm = pluggy.PluginManager("trl_formatkit")
    from trl_formatkit import hookspecs

    pm.add_hookspecs(hookspecs)
    pm.register(plugin)
    with pytest.raises(pluggy.PluginValidationError, match="unknown hook 'formatkit_register_format'"):
        pm.check_pending()
    # the host turns it into an error that names the fix, and does not keep the plugin
    with pytest.raises(FormatKitValueError, match=r"did you mean 'formatkit_register_formats'\?"):
        host.register(plugin, name="misspelt")
    assert not host.pm.has_plugin("misspelt")
    assert FormatRegistry([], plugins=host).names() == []


def test_host_rejects_unmarked_hooks_classes_empty_plugins_and_taken_names():
    host = PluginHost(group=NO_GROUP, builtins=())

    def formatkit_register_formats(register):  # forgot @hookimpl
        register(_fmt("x"))

    with pytest.raises(FormatKitValueError, match="without the @hookimpl marker"):
        host.register(_plugin("unmarked", formatkit_register_formats=formatkit_register_formats))

    class Plugin:
        @hookimpl
        def formatkit_register_formats(self, register):
            pass

    with pytest.raises(FormatKitTypeError, match=r"points at the class .*Plugin; point the entry point at a module"):
        host.register(Plugin, name="klass")
    assert host.register(Plugin(), name="instance") == "instance"  # an instance is fine
    with pytest.raises(FormatKitValueError, match="implements no trl-formatkit hook"):
        host.register(_plugin("empty"))
    with pytest.raises(FormatKitValueError, match="a plugin named 'instance' is already registered"):
        host.register(_plugin("again", formatkit_register_formats=_registering()), name="instance")
    assert [p.name for p in host.plugin_info()] == ["instance"]


def test_a_failing_hook_is_named_in_a_warning_and_the_rest_still_load():
    host = PluginHost(group=NO_GROUP)

    @hookimpl
    def half_then_raise(register):
        register(_fmt("half-registered"))
        raise RuntimeError("boom")

    host.register(_plugin("good", formatkit_register_formats=_registering(_fmt("qa", "question", "answer"))))
    host.register(_plugin("bad", formatkit_register_formats=half_then_raise))
    host.register(_plugin("clash", formatkit_register_formats=_registering(_fmt("chatml", "chat"))))
    host.register(_plugin("late", formatkit_register_formats=_registering(_fmt("late"))))
    reg = FormatRegistry(plugins=host)
    with pytest.warns(FormatKitWarning) as caught:
        names = reg.names()
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2
    assert "plugin 'bad' (" in messages[0] and "RuntimeError: boom" in messages[0]
    assert "raised in its formatkit_register_formats hook and is skipped" in messages[0]
    assert "The other plugins still load" in messages[0]
    assert "plugin 'clash'" in messages[1] and "format name 'chatml' is already registered" in messages[1]
    assert "replace=True" in messages[1]
    assert {"qa", "late", "chatml"} <= set(names) and "half-registered" not in names  # nothing half-done kept
    assert reg.get("chatml").columns == frozenset({"messages"})  # the built-in survived
    status = {p.name: p.status for p in host.plugin_info()}
    assert status == {"builtin": "loaded", "good": "loaded", "bad": "failed", "clash": "failed", "late": "loaded"}
    assert reg.names() == names  # warned once: the next use is silent (filterwarnings = error)


def test_a_plugin_may_replace_a_format_when_it_asks_to_and_it_says_so():
    host = PluginHost(group=NO_GROUP)
    mine = _fmt("chatml", "messages", aliases=("my-chat",))

    @hookimpl
    def formatkit_register_formats(register):
        register(mine, replace=True)

    host.register(_plugin("replacer", formatkit_register_formats=formatkit_register_formats))
    reg = FormatRegistry(plugins=host)
    with pytest.warns(FormatKitWarning, match=r"plugin 'replacer' replaces the format 'chatml' that plugin 'builtin'"):
        assert reg.get("chatml") is mine
    assert reg.get("my-chat") is mine and "messages" not in reg


def _interrupting_load(host: PluginHost, exc: BaseException, then: types.ModuleType, started=None, delay=0.0):
    """Make ``host``'s entry-point step raise ``exc`` the first time, and register ``then`` the next time."""
    import time

    calls = []

    def load_entry_points():
        calls.append(1)
        host._register(_plugin("half", formatkit_register_formats=_registering(_fmt("half-done"))), "half")
        if started is not None:
            started.set()
        time.sleep(delay)
        if len(calls) == 1 and exc is not None:
            raise exc
        host._register(then, then.__name__)

    host._load_entry_points = load_entry_points
    return calls


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(1)])
def test_an_interrupted_first_load_leaves_nothing_half_loaded(exc):
    """A Ctrl-C during the first load used to leave a partial registry for the life of the process."""
    host = PluginHost(group=NO_GROUP)
    late = _plugin("late", formatkit_register_formats=_registering(_fmt("late-format")))
    calls = _interrupting_load(host, exc, late)
    reg = FormatRegistry(plugins=host)
    with pytest.raises(type(exc)):
        reg.get("late-format")
    assert not host._loaded and not host.pm.has_plugin("half")
    assert reg.get("late-format").name == "late-format" and len(calls) == 2  # loaded again, whole
    assert sorted(name for name, _ in host.pm.list_name_plugin()) == ["builtin", "half", "late"]


def test_an_interrupt_inside_a_hook_is_not_remembered_as_applied():
    host = PluginHost(group=NO_GROUP, builtins=())
    calls = []

    @hookimpl
    def formatkit_register_formats(register):
        calls.append(1)
        register(_fmt("flaky"))
        if len(calls) == 1:
            raise KeyboardInterrupt

    host.register(_plugin("flaky", formatkit_register_formats=formatkit_register_formats))
    reg = FormatRegistry(plugins=host)
    with pytest.raises(KeyboardInterrupt):
        reg.names()
    assert reg.names() == ["flaky"]


def test_a_thread_asking_during_the_first_load_waits_for_all_of_it():
    """A second thread used to see the registry half loaded and get a spurious 'unknown format'."""
    import threading

    host = PluginHost(group=NO_GROUP)
    started = threading.Event()
    _interrupting_load(host, None, _plugin("slow", formatkit_register_formats=_registering(_fmt("slow-format"))),
                       started=started, delay=0.3)  # fmt: skip
    loader = threading.Thread(target=host.load)
    loader.start()
    assert started.wait(10)
    try:
        assert FormatRegistry(plugins=host).get("slow-format").name == "slow-format"
    finally:
        loader.join()


def test_a_plugin_registered_after_first_use_is_applied_on_the_next_use():
    host = PluginHost(group=NO_GROUP)
    reg = FormatRegistry(plugins=host)
    assert "late" not in reg
    host.register(_plugin("late", formatkit_register_formats=_registering(_fmt("late"))))
    assert "late" in reg and reg.names().count("chatml") == 1  # built-ins are not applied twice


def test_a_plugin_registering_twice_the_same_name_fails_as_a_whole():
    host = PluginHost(group=NO_GROUP, builtins=())
    host.register(_plugin("twice", formatkit_register_formats=_registering(_fmt("a"), _fmt("A"))))
    reg = FormatRegistry(plugins=host)
    with pytest.warns(FormatKitWarning, match=r"plugin 'twice' registers 'a' twice"):
        assert reg.names() == []


def test_register_callback_rejects_non_formats():
    host = PluginHost(group=NO_GROUP, builtins=())

    @hookimpl
    def formatkit_register_formats(register):
        register({"name": "dict"})

    host.register(_plugin("dicts", formatkit_register_formats=formatkit_register_formats))
    with pytest.warns(FormatKitWarning, match=r"register\(\) takes a trl_formatkit.Format, got dict"):
        FormatRegistry(plugins=host).names()


def test_default_host_api():
    from trl_formatkit import plugins

    plugins.load_plugins()
    plugins.load_plugins()  # idempotent
    assert plugins.get_plugin_manager() is plugins.default_host.pm
    assert plugins.get_plugin_manager().has_plugin("builtin")
    assert plugins.plugin_info()[0].name == "builtin"


def test_register_plugin_on_the_default_host_feeds_the_default_registry():
    from trl_formatkit import formats, plugins

    name = "test-runtime-plugin"
    plugin = _plugin(name, formatkit_register_formats=_registering(_fmt("runtime-only-format")))
    try:
        assert plugins.register_plugin(plugin, name=name) == name
        assert formats.get("runtime-only-format").name == "runtime-only-format"
    finally:
        plugins.default_host.pm.unregister(plugin)
        if "runtime-only-format" in formats:
            formats.unregister("runtime-only-format")
        plugins.default_host._info.pop(name, None)


# -- entry points, for real -------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory):
    """The plugin packages, pip-installed (``--target``) into a temporary folder; its path."""
    work = tmp_path_factory.mktemp("formatkit-plugins")
    sources = []
    for source in PLUGIN_SOURCES:  # build from copies: setuptools writes build/ and *.egg-info next to the source
        copy = work / "src" / source.name
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
        sources.append(str(copy))
    site = work / "site"
    command = [
        sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
        "--disable-pip-version-check", "--quiet", "--target", str(site), *sources,
    ]  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        pytest.fail(
            "pip could not install the test plugins (needs pip and setuptools in the test environment: "
            f"pip install -c constraints.txt -e '.[test]'):\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        )
    installed = sorted(p.name for p in site.glob("*.dist-info"))
    assert installed == [
        "formatkit_broken_plugin-0.1.0.dist-info",
        "formatkit_dolly-0.1.0.dist-info",
        "formatkit_example_plugin-0.1.0.dist-info",
    ]
    return site


PROBE = r"""
import json, sys, warnings
warnings.simplefilter("error")
out = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import trl_formatkit
    from trl_formatkit import FormatKitWarning, detect_format, formats, plugins, to_messages
    out["plugin_modules_at_import"] = sorted(m for m in sys.modules if m.startswith("formatkit_"))
    out["names"] = formats.names()
    out["plugin_modules_after_use"] = sorted(m for m in sys.modules if m.startswith("formatkit_"))
    out["checks"] = {}
    from datasets import Dataset
    if "qa" in formats:
        qa_ds = Dataset.from_list([{"id": 1, "question": "2+2?", "answer": "4"}])
        out["checks"].update({
            "qa_by_alias": formats.get("question-answer").name,
            "qa_detected": detect_format(qa_ds).name,
            "oasst_detected": detect_format(["INSTRUCTION", "RESPONSE", "SOURCE"]).name,
            "qa_messages": to_messages(qa_ds)[0]["messages"],
            "qa_columns": to_messages(qa_ds).column_names,
        })
    if "dolly" in formats:
        dolly_ds = Dataset.from_list([{"instruction": "Summarize.", "context": "Long text.", "response": "Short.",
                                       "category": "summarization"}])
        out["checks"].update({
            "dolly_by_alias": formats.get("dolly-15k").name,
            "dolly_detected": detect_format(dolly_ds).name,
            "dolly_messages": to_messages(dolly_ds)[0]["messages"],
        })
    out["checks"]["chatml_columns"] = sorted(formats.get("chatml").columns)
    try:
        formats.get("qa")
        out["qa_error"] = None
    except KeyError as exc:
        out["qa_error"] = str(exc)
    out["status"] = {p.name: p.status for p in plugins.plugin_info()}
    out["pm_plugins"] = sorted(name for name, _ in plugins.get_plugin_manager().list_name_plugin())
out["warnings"] = [str(w.message) for w in caught if issubclass(w.category, FormatKitWarning)]
out["other_warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught
                         if not issubclass(w.category, FormatKitWarning)]
print(json.dumps(out))
"""


def _probe(site: Path, **env_vars: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != PLUGINS_ENV_VAR}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update({"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_DISABLE_PROGRESS_BARS": "1"})
    for key, value in env_vars.items():
        if value is not None:
            env[key] = value
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, f"probe failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_installed_plugins_work_without_being_imported(plugin_site):
    out = _probe(plugin_site)
    assert out["plugin_modules_at_import"] == []  # `import trl_formatkit` loads no plugin
    assert {"formatkit_example_plugin", "formatkit_dolly"} <= set(out["plugin_modules_after_use"])
    assert out["names"] == ["alpaca", "chatml", "dolly", "instruction", "oasst", "qa", "sharegpt", "text"]
    checks = out["checks"]
    assert checks["qa_by_alias"] == "qa" and checks["dolly_by_alias"] == "dolly"
    assert checks["qa_detected"] == "qa" and checks["dolly_detected"] == "dolly"
    assert checks["oasst_detected"] == "oasst"
    assert checks["qa_messages"] == [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    assert checks["qa_columns"] == ["id", "messages"]
    assert checks["dolly_messages"][0] == {"role": "user", "content": "Summarize.\n\nLong text."}
    assert checks["chatml_columns"] == ["messages"]  # the 'duplicate-name' plugin did not replace it
    assert out["other_warnings"] == []


def test_each_failing_plugin_is_named_once_and_isolated(plugin_site):
    out = _probe(plugin_site)
    assert out["status"] == {
        "builtin": "loaded",
        **{name: "failed" for name in BROKEN},
        "dolly": "loaded",
        "example": "loaded",
    }
    assert len(out["warnings"]) == len(BROKEN), out["warnings"]
    for name, stage in BROKEN.items():
        (message,) = [w for w in out["warnings"] if f"plugin '{name}' (" in w]
        assert stage in message and "from formatkit-broken-plugin 0.1.0" in message
        assert "pip uninstall formatkit-broken-plugin" in message and "FORMATKIT_PLUGINS" in message
    by_name = {name: next(w for w in out["warnings"] if f"plugin '{name}' (" in w) for name in BROKEN}
    assert "No module named 'formatkit_dependency_that_is_not_installed'" in by_name["broken-import"]
    assert "did you mean 'formatkit_register_formats'?" in by_name["misspelt-hook"]
    assert "format name 'chatml' is already registered" in by_name["duplicate-name"]
    assert "points at the class Plugin" in by_name["class-target"]
    assert "half-registered" not in out["names"] and "never-registered" not in out["names"]
    assert "from-a-class" not in out["names"]
    # failed plugins are not left in the plugin manager (the hook-time failures are, but marked failed)
    assert "misspelt-hook" not in out["pm_plugins"] and "class-target" not in out["pm_plugins"]


@pytest.mark.parametrize(
    ("value", "loaded"),
    [
        ("example", {"example"}),
        ("example, formatkit-dolly", {"example", "dolly"}),  # entry-point or distribution names
        ("FormatKit_Dolly", {"dolly"}),  # normalized like distribution names
        ("", set()),
    ],
)
def test_env_var_restricts_which_plugins_load(plugin_site, value, loaded):
    out = _probe(plugin_site, FORMATKIT_PLUGINS=value)
    assert out["warnings"] == []  # the broken ones are not even imported
    assert {name for name, status in out["status"].items() if status == "loaded"} == {"builtin", *loaded}
    assert {name for name, status in out["status"].items() if status == "disabled"} == (
        {*BROKEN, "dolly", "example"} - loaded
    )
    assert out["plugin_modules_after_use"] == sorted(
        {"example": "formatkit_example_plugin", "dolly": "formatkit_dolly"}[name] for name in loaded
    )
    assert {"alpaca", "chatml", "instruction", "sharegpt", "text"} <= set(out["names"])
    assert {"qa_detected", "dolly_detected"} & set(out["checks"]) == {
        {"example": "qa_detected", "dolly": "dolly_detected"}[name] for name in loaded
    }
    assert out["checks"]["chatml_columns"] == ["messages"]
    if "example" not in loaded:
        assert "unknown format 'qa'" in out["qa_error"]
        assert f"FORMATKIT_PLUGINS={value!r} restricts which installed plugins load" in out["qa_error"]


def test_env_var_naming_an_uninstalled_plugin_warns(plugin_site):
    out = _probe(plugin_site, FORMATKIT_PLUGINS="example,nope")
    assert out["warnings"] == [
        "FORMATKIT_PLUGINS names plugin(s) nope that are not installed; installed trl-formatkit plugins: "
        "broken-hook, broken-import, class-target, dolly, duplicate-name, example, misspelt-hook. Check the "
        "spelling, or pip install the package that provides it."
    ]
    assert "qa" in out["names"]


def test_without_the_plugins_installed_only_builtins_load(tmp_path):
    out = _probe(tmp_path)  # an empty folder on the path: no trl_formatkit.plugins entry points from the tests
    assert "qa" not in out["names"] and "dolly" not in out["names"]
    assert out["warnings"] == [] and out["status"]["builtin"] == "loaded"


@pytest.mark.parametrize("module", ["trl_formatkit.hookspecs", "trl_formatkit.plugins"])
def test_plugin_modules_import_without_trl_or_datasets(module):
    code = (
        "import importlib, json, sys\n"
        f"m = importlib.import_module({module!r})\n"
        "if hasattr(m, 'load_plugins'):\n"
        "    m.load_plugins()  # loading the built-ins stays light too\n"
        "print(json.dumps(sorted(n for n in sys.modules if n.split('.')[0] in ('trl', 'datasets'))))\n"
    )
    assert run_python_json(code) == []
