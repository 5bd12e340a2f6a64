"""Run by ``test_houdini_python.py`` in a Python like Houdini's: ``python -S`` (no site-packages)
with ``PYTHONPATH`` = what ``package.json`` sets + a folder holding only the Qt binding.

Imports every module of the plugin, builds the monitor panel offscreen, then prints one JSON
object: the binding, each module that failed to import with its error, the panel's outcome,
and every loaded module that is neither standard library, nor plugin, nor binding. Uses the
standard library only (it runs where nothing else is).
"""

import json
import os
import sys
import traceback


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


def foreign_modules(allowed_dirs):
    """Loaded modules from files outside the standard library's and ``allowed_dirs``."""
    allowed = [os.path.realpath(d) + os.sep for d in [os.path.dirname(os.__file__), *allowed_dirs]]
    stdlib = set(sys.stdlib_module_names) | {"__main__"}
    out = []
    for name, module in sorted(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name.split(".")[0] in stdlib or not path or not os.path.isabs(path):
            continue  # shiboken's embedded modules carry made-up relative names
        if not any(os.path.realpath(path).startswith(d) for d in allowed):
            out.append(f"{name} ({path})")
    return out


def main() -> int:
    pylibs, binding_dir = sys.argv[1], sys.argv[2]
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
    qt = sys.modules.get("hpcdock.panel.qt")
    print(json.dumps({
        "binding": getattr(qt, "API_NAME", None),
        "failures": failures,
        "panel": panel,
        "foreign": foreign_modules([pylibs] + [os.path.join(binding_dir, e) for e in os.listdir(binding_dir)]),
        "site": "site" in sys.modules,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
