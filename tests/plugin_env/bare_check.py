"""Run by ``test_houdini_python.py`` in a Python like Houdini's: ``python -S`` (no site-packages)
with ``PYTHONPATH`` = what ``package.json`` sets + a folder holding only the Qt binding.

``bare_check.py PYLIBS BINDING_DIR [FAKE_HOU]``: imports every module of the plugin and
builds the monitor panel offscreen; given a stand-in ``hou`` module file, then also runs
Houdini's entry points the way Houdini does: the ``.pypanel`` script's
``onCreateInterface``/``onDestroyInterface``, and the imports of the shelf tools, the HDA's
PythonModule and the SOHO program. Prints one JSON object: the binding, each module that
failed to import with its error, the panel's outcome, each entry point's outcome, and every
loaded module that is neither standard library, nor plugin, nor binding. Uses the standard
library only (it runs where nothing else is).
"""

import importlib.util
import json
import os
import re
import sys
import traceback
import xml.etree.ElementTree as ET


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def plugin_modules(pylibs: str):
    top = os.path.join(pylibs, "hpcdock")
    for base, dirs, files in os.walk(top):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(base, name), pylibs)[:-3].split(os.sep)
                yield ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def build_panel() -> str:
    from hpcdock.panel import create_panel
    from hpcdock.panel.qt import QtWidgets

    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication(["bare_check"])
    panel = create_panel(start=False)
    panel.resize(900, 600)
    panel.show()
    app.processEvents()
    shown = (type(panel).__name__, panel.isVisible(), panel.jobs_view.model() is panel.jobs_model)
    panel.shutdown()
    panel.close()
    return "built" if shown == ("MonitorPanel", True, True) else f"unexpected panel {shown}"


def _imports(script: str):
    """(module, name) of each ``from hpcdock... import a, b`` line of an entry-point script."""
    for module, names in re.findall(r"^\s*from (hpcdock[\w.]*) import ([\w, ]+)$", script, re.M):
        for name in names.split(","):
            yield module, name.strip()


def install_hou(path: str) -> None:
    spec = importlib.util.spec_from_file_location("hou", path)
    hou = importlib.util.module_from_spec(spec)
    sys.modules["hou"] = hou
    spec.loader.exec_module(hou)


def entry_points(plugin: str) -> dict:
    """Each Houdini entry point of the plugin: "ok" or the error it raised."""
    out = {}

    def attempt(key, fn):
        try:
            out[key] = fn()
        except Exception:
            out[key] = traceback.format_exc()

    def pypanel() -> str:
        root = ET.parse(os.path.join(plugin, "python_panels", "hpcdock.pypanel")).getroot()
        namespace = {"__name__": "hpcdock_pypanel"}
        exec(compile(root.find("interface/script").text, "hpcdock.pypanel", "exec"), namespace)
        panel = namespace["onCreateInterface"]()
        kind = type(panel).__name__
        namespace["onDestroyInterface"]()
        return "ok" if kind == "MonitorPanel" else f"onCreateInterface returned a {kind}"

    attempt("pypanel", pypanel)
    scripts = {"soho": open(os.path.join(plugin, "soho", "hpcdock_submit.py")).read()}
    hda_type = os.path.join(plugin, "otls", "hpcdock_submit.hda", "Driver_1hpcdock__submit")
    scripts["PythonModule"] = open(os.path.join(hda_type, "PythonModule")).read()
    for tool in ET.parse(os.path.join(plugin, "toolbar", "hpcdock.shelf")).getroot().findall("tool"):
        scripts["shelf " + tool.get("name")] = tool.find("script").text
    for key, script in sorted(scripts.items()):
        found = list(_imports(script))
        attempt(
            key,
            lambda found=found: (
                "ok"
                if found and all(callable(getattr(importlib.import_module(m), n)) for m, n in found)
                else f"imports {found}"
            ),
        )
    return out


def foreign_modules(allowed):
    """Loaded modules from files outside the standard library and the ``allowed`` files and folders."""
    allowed = [os.path.realpath(p) for p in [os.path.dirname(os.__file__), *allowed]]
    stdlib = set(sys.stdlib_module_names) | {"__main__"}
    out = []
    for name, module in sorted(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name.split(".")[0] in stdlib or not path or not os.path.isabs(path):
            continue  # shiboken's embedded modules carry made-up relative names
        real = os.path.realpath(path)
        if not any(real == p or real.startswith(p + os.sep) for p in allowed):
            out.append(f"{name} ({path})")
    return out


def main() -> int:
    pylibs, binding_dir, fake_hou = (sys.argv[1:] + [""])[:3]
    if fake_hou:
        install_hou(fake_hou)
    failures = {}
    for name in plugin_modules(pylibs):
        try:
            __import__(name)
        except Exception as exc:
            failures[name] = _error(exc)
    try:
        panel = build_panel()
    except Exception:
        panel = traceback.format_exc()
    entries = entry_points(os.path.dirname(pylibs)) if fake_hou else {}
    qt = sys.modules.get("hpcdock.panel.qt")
    print(
        json.dumps(
            {
                "binding": getattr(qt, "API_NAME", None),
                "failures": failures,
                "panel": panel,
                "entry_points": entries,
                "foreign": foreign_modules(
                    [
                        pylibs,
                        *(os.path.join(binding_dir, e) for e in os.listdir(binding_dir)),
                        *([fake_hou] if fake_hou else []),
                    ]
                ),
                "site": "site" in sys.modules,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
