"""Find and start ``hpcdock-service`` when none is running (the panel's start action)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from .. import paths

EXECUTABLE = "hpcdock-service"


def find_service_executable(extra_dirs: Optional[List[str]] = None) -> Optional[str]:
    """``hpcdock-service`` next to the running Python (a venv's bin/), else on PATH."""
    names = [EXECUTABLE + ".exe", EXECUTABLE] if os.name == "nt" else [EXECUTABLE]
    dirs = list(extra_dirs or [])
    if sys.executable:
        here = Path(sys.executable).resolve().parent
        dirs += [str(Path(sys.executable).parent), str(here)]
        if os.name == "nt":
            dirs.append(str(here / "Scripts"))
    for directory in dirs:
        for name in names:
            candidate = os.path.join(directory, name)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
    return shutil.which(EXECUTABLE)


def start_service(executable: Optional[str] = None, args: Optional[List[str]] = None) -> subprocess.Popen:
    """Start the service detached from this process (it outlives the panel and Houdini).

    Without ``args`` it listens where the panel's client looks: ``$HPCDOCK_URL`` when set,
    else the user's private socket (the service's default). Its output goes to
    ``<state dir>/service-panel.log``. Raises FileNotFoundError when no executable can be found.
    """
    if args is None:
        url = os.environ.get("HPCDOCK_URL")
        args = ["--listen", url] if url else []
    exe = executable or find_service_executable()
    if not exe:
        raise FileNotFoundError(f"{EXECUTABLE} was found neither next to {sys.executable} nor on PATH")
    log_dir = paths.state_dir()
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / "service-panel.log", "ab")  # handed to the child, which keeps it open
    kwargs: Dict[str, Any] = {}
    if os.name == "nt":
        kwargs["creationflags"] = 0x00000008 | 0x00000200  # DETACHED_PROCESS | CREATE_NEW_PROCESS_GROUP
    else:
        kwargs["start_new_session"] = True
    try:
        return subprocess.Popen(
            [exe] + list(args or []),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            close_fds=True,
            **kwargs,
        )
    finally:
        log.close()
