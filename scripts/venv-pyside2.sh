#!/usr/bin/env bash
# The PySide2 lane's Python (`make venv-pyside2`): Debian's Python with Debian's PySide2 5.15
# (the binding of Houdini 19.5-20.5) and the test tools of tests/plugin_env/requirements-pyside2.txt.
# PySide2 and shiboken2 are linked in by name rather than opening the system's site-packages,
# which also hold yaml, requests and more that Houdini's Python does not have.
set -euo pipefail
venv=${1:?usage: venv-pyside2.sh VENV_DIR}
python=${PYTHON:-/usr/bin/python3}
here=$(cd "$(dirname "$0")/.." && pwd)

system=$("$python" -c 'import os, PySide2; print(os.path.dirname(PySide2.__path__[0]))' 2>/dev/null) || {
  echo "venv-pyside2: $python cannot import PySide2; install Debian's python3-pyside2.qtwidgets" \
       "(as root: scripts/setup-system.sh)" >&2
  exit 1
}
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install -q -r "$here/tests/plugin_env/requirements-pyside2.txt"
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
for package in PySide2 shiboken2; do
  ln -s "$system/$package" "$site/$package"
done
QT_QPA_PLATFORM=offscreen "$venv/bin/python" -c 'import PySide2.QtWidgets'
if "$venv/bin/python" -c 'import PySide6' 2>/dev/null; then
  echo "venv-pyside2: PySide6 is importable in $venv; the lane would not test PySide2" >&2
  exit 1
fi
