"""The repository passes its linter, its formatter (ruff, Python 3.9 as the target) and its type checker
(mypy: the service as the Python it needs, the plugin as Python 3.9), with the settings in pyproject.toml.

The plugin's Python 3.9 compatibility itself is checked with vermin in tests/houdini/test_package.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


TREES = ["houdini_plugin", "service", "tests", "bench", "scripts"]


def _ruff(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert exe, "ruff is part of the test extras; install with pip install -e '.[test]'"
    return subprocess.run([exe, *args, "--no-cache", *TREES], cwd=REPO, capture_output=True, text=True)


def test_ruff_finds_nothing() -> None:
    proc = _ruff("check")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff_format_changes_nothing() -> None:
    proc = _ruff("format", "--check")
    assert proc.returncode == 0, "run `ruff format` on these files:\n" + proc.stdout + proc.stderr


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-error-summary", *args], cwd=REPO, capture_output=True, text=True
    )


def test_mypy_finds_nothing_in_the_service() -> None:
    """The service and what it imports of the plugin, as the Python version pyproject.toml names."""
    proc = _mypy("-p", "hpcdock_service")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_finds_nothing_in_the_plugin_as_python_3_9() -> None:
    """Houdini 19.5 and 20.0 run the plugin on Python 3.9: it is checked as that."""
    proc = _mypy("--python-version", "3.9", "-p", "hpcdock")
    assert proc.returncode == 0, proc.stdout + proc.stderr
