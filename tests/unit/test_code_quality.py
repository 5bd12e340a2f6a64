"""The repository passes its linter (ruff, with Python 3.9 as the target, see pyproject.toml).

The plugin's Python 3.9 compatibility itself is checked with vermin in tests/houdini/test_package.py.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_ruff_finds_nothing() -> None:
    exe = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert exe, "ruff is part of the test extras; install with pip install -e '.[test]'"
    proc = subprocess.run([exe, "check", "--no-cache", "houdini_plugin", "service", "tests", "bench", "scripts"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
