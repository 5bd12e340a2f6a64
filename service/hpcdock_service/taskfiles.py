"""A task's command and embedded files, and its environments' actions and files, resolved as an
OpenJD session resolves them.

OpenJD's ``embeddedFiles`` are written before the action that uses them runs, into a directory
of the session's, and each is reachable from its script's format strings: a step script's as
``{{Task.File.NAME}}``, an environment's as ``{{Env.File.NAME}}``; a file's own ``data`` may use
every symbol the action can, those file paths included. This module does that with
``openjd-sessions``' own rules: its line-end conversion, and a file without a ``filename`` gets
a name of the runtime's choosing (``tmp`` and random characters, as its ``mkstemp`` gives).

The files are written *inside the container* the actions run in, never where the host's own
files are: a cold task's are put into its container by the engine before it starts (see
:class:`.engines.base.ContainerFile`), each scope in a directory of its own under ``/openjd``; a
session's are written by the service into the session's working directory before each action,
as openjd-sessions writes them into ``embedded_files`` under its working directory (see
:meth:`.sessions.Session.put_files`).
"""

from __future__ import annotations

import posixpath
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from openjd.model import SymbolTable
from openjd.model.v2023_09 import ArgString, DataString
from openjd.sessions._embedded_files import _convert_line_endings

from .bundle_loader import EmbeddedFile, Environment
from .engines.base import ContainerFile

#: Where a cold task's embedded files are written inside its container: a directory of the task's
#: own, never a host mount. A new top-level directory, so that writing it changes no directory the
#: image has (a tar entry for ``/tmp`` would reset its mode).
FILES_DIR = "/openjd/embedded_files"
#: Where a cold task's environments' files go: one directory per environment, since the container
#: gets every file before its first action, and two scopes may name a file alike.
ENV_FILES_DIR = "/openjd/environment_files"
READ_WRITE = 0o644  # readable by whatever user the image runs as
RUNNABLE = 0o755


@dataclass(frozen=True)
class ResolvedEnvironment:
    """An environment as one session (or one cold task) enters it: its format strings resolved
    and its files' paths chosen and data resolved."""

    name: str
    enter: list[str]  # onEnter's command line (empty: none)
    exit: list[str]  # onExit's command line (empty: none)
    variables: dict[str, str]
    timeout: Optional[float]
    files: list[ContainerFile]  # written before each of its actions


def cold_env_files_dir(index: int) -> str:
    """The directory of a cold task's ``index``-th environment's files."""
    return f"{ENV_FILES_DIR}/{index}"


def _file_name(file: EmbeddedFile) -> str:
    return file.filename or f"tmp{secrets.token_hex(8)}"


def symbols(job_params: Mapping[str, str], task_params: Mapping[str, str], workdir: str) -> SymbolTable:
    """What a script's format strings may refer to (an environment's: no task parameters)."""
    source: dict[str, Any] = {"Session.WorkingDirectory": workdir, "Session.HasPathMappingRules": "false"}
    for name, value in job_params.items():
        source[f"Param.{name}"] = value  # no path mapping here: a PATH's mapped value is its raw value
        source[f"RawParam.{name}"] = value
    for name, value in task_params.items():
        source[f"Task.Param.{name}"] = value
        source[f"Task.RawParam.{name}"] = value
    return SymbolTable(source=source)


def _with_files(
    symtab: SymbolTable, prefix: str, files: Sequence[EmbeddedFile], files_dir: str
) -> list[ContainerFile]:
    """Name each file in ``symtab`` (paths first: a file's data may name another file), then
    resolve their data."""
    paths = [posixpath.join(files_dir, _file_name(file)) for file in files]
    for file, path in zip(files, paths):
        symtab[f"{prefix}.{file.name}"] = path
    return [
        ContainerFile(
            path=path,
            data=_convert_line_endings(
                DataString(file.data).resolve(symtab=symtab), file.end_of_line
            ).encode(),
            mode=RUNNABLE if file.runnable else READ_WRITE,
        )
        for file, path in zip(files, paths)
    ]


def resolve(
    command: Sequence[str],
    files: Sequence[EmbeddedFile],
    job_params: Mapping[str, str],
    task_params: Mapping[str, str],
    workdir: str,
    files_dir: str = FILES_DIR,
) -> tuple[list[str], list[ContainerFile]]:
    """The task's command line and the files to write, in ``files_dir``, before it starts."""
    symtab = symbols(job_params, task_params, workdir)
    written = _with_files(symtab, "Task.File", files, files_dir)
    return [ArgString(part).resolve(symtab=symtab) for part in command], written


def resolve_environment(
    env: Environment, job_params: Mapping[str, str], workdir: str, files_dir: str
) -> ResolvedEnvironment:
    """``env`` as a session enters it: its ``variables`` resolved against the session's symbols
    (as openjd-sessions does, without its files), its actions and files' data with
    ``{{Env.File.NAME}}`` besides."""
    base = symbols(job_params, {}, workdir)
    variables = {key: ArgString(value).resolve(symtab=base) for key, value in env.variables.items()}
    symtab = symbols(job_params, {}, workdir)
    files = _with_files(symtab, "Env.File", env.files, files_dir)
    return ResolvedEnvironment(
        name=env.name,
        enter=[ArgString(part).resolve(symtab=symtab) for part in env.enter],
        exit=[ArgString(part).resolve(symtab=symtab) for part in env.exit],
        variables=variables,
        timeout=env.timeout,
        files=files,
    )
