"""The environment Houdini builds from the repository's ``package.json``, and nothing else.

The bare-Python lane starts interpreters with exactly this ``PYTHONPATH``, so a module that
works only because a virtualenv or an editable install put it on ``sys.path`` fails there
as it would in Houdini. Only the forms ``package.json`` uses are read (``{NAME: value}`` and
``{NAME: {value, method}}`` with ``$NAME``/``${NAME}``); anything else raises, so a changed
package file cannot be misread silently.

Run as a script, it prints one variable: ``python houdini_package.py PYTHONPATH``.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Dict, Mapping, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGE_FILE = os.path.join(ROOT, "package.json")
_VARIABLE = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def _expand(text: str, env: Mapping[str, str]) -> str:
    def value(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in env:
            raise KeyError(f"package.json uses ${name}, which nothing defines")
        return env[name]

    return _VARIABLE.sub(value, text)


def package_env(
    package_file: str = PACKAGE_FILE, environ: Optional[Mapping[str, str]] = None
) -> Dict[str, str]:
    """``environ`` (empty by default) plus the variables ``package_file`` sets, in order.

    ``$HOUDINI_PACKAGE_PATH`` is the package file's directory while its entries are read.
    """
    with open(package_file, encoding="utf-8") as f:
        package = json.load(f)
    env = dict(environ or {})
    env["HOUDINI_PACKAGE_PATH"] = os.path.dirname(os.path.abspath(package_file))
    for item in package.get("env", []):
        if not isinstance(item, dict) or len(item) != 1:
            raise ValueError(f"package.json: env entries are {{NAME: value}}, got {item!r}")
        ((name, spec),) = item.items()
        method = "replace"
        if isinstance(spec, dict):
            if set(spec) - {"value", "method"} or not isinstance(spec.get("value"), str):
                raise ValueError(f"package.json: env {name}: only a string value and a method are read")
            method = spec.get("method", "replace")
            spec = spec["value"]
        if not isinstance(spec, str) or method not in ("replace", "prepend", "append"):
            raise ValueError(f"package.json: env {name}: unsupported value {spec!r} / method {method!r}")
        value = _expand(spec, env)
        before = env.get(name)
        if before and method == "prepend":
            value = value + os.pathsep + before
        elif before and method == "append":
            value = before + os.pathsep + value
        env[name] = value
    del env["HOUDINI_PACKAGE_PATH"]
    return env


if __name__ == "__main__":
    print(package_env()[sys.argv[1]])
