"""Where hpcdock keeps its files, shared by the service and every client.

The service writes its bearer token to ``token_path()``; clients (the CLI, the panel,
the ROP) read it from the same place, so a user never copies a secret by hand.
"""

import os
from pathlib import Path

from . import endpoint


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/hpcdock`` (default ``~/.config/hpcdock``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "hpcdock"


def state_dir() -> Path:
    """``$XDG_STATE_HOME/hpcdock`` (default ``~/.local/state/hpcdock``): the store, logs, thumbnails."""
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "hpcdock"


def token_path() -> Path:
    return config_dir() / "token"


def service_url() -> str:
    """The address clients talk to: ``$HPCDOCK_URL``, else the user's own service's socket."""
    return os.environ.get("HPCDOCK_URL") or endpoint.default().url
