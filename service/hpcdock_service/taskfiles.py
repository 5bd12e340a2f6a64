"""One task's command and embedded files, resolved as an OpenJD session resolves them.

OpenJD's ``embeddedFiles`` are written before the action runs, into a directory of the
session's, and each is reachable from the step's format strings as ``{{Task.File.NAME}}``;
a file's own ``data`` may use every symbol the command can, those file paths included. This
module does that with ``openjd-sessions``' own rules: its line-end conversion, and a file
without a ``filename`` gets a name of the runtime's choosing. The files are written *inside
the task's container* (the engine puts them there before the task starts, see
:class:`.engines.base.ContainerFile`), never on the host: nothing a task can reach on the
host is written by the service for it.
"""

from __future__ import annotations

import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from openjd.model import SymbolTable
from openjd.model.v2023_09 import ArgString, DataString
from openjd.sessions._embedded_files import _convert_line_endings

from .bundle import EmbeddedFile
from .engines.base import ContainerFile

#: Where a task's embedded files are written inside its container: a directory of the task's own
#: (like openjd-sessions' ``embedded_files`` directory of the session), never a host mount. A new
#: top-level directory, so that writing it changes no directory the image has (a tar entry for
#: ``/tmp`` would reset its mode).
FILES_DIR = "/openjd/embedded_files"
READ_WRITE = 0o644  # readable by whatever user the image runs as
RUNNABLE = 0o755


def file_path(file: EmbeddedFile) -> str:
    """Where ``file`` lands in the container (a nameless one is named after its OpenJD name)."""
    return posixpath.join(FILES_DIR, file.filename or f"{file.name}.file")


def symbols(job_params: Mapping[str, str], task_params: Mapping[str, str], workdir: str) -> SymbolTable:
    """What a step script's format strings may refer to for this task."""
    source: dict[str, Any] = {"Session.WorkingDirectory": workdir, "Session.HasPathMappingRules": "false"}
    for name, value in job_params.items():
        source[f"Param.{name}"] = value  # no path mapping here: a PATH's mapped value is its raw value
        source[f"RawParam.{name}"] = value
    for name, value in task_params.items():
        source[f"Task.Param.{name}"] = value
        source[f"Task.RawParam.{name}"] = value
    return SymbolTable(source=source)


def resolve(
    command: Sequence[str],
    files: Sequence[EmbeddedFile],
    job_params: Mapping[str, str],
    task_params: Mapping[str, str],
    workdir: str,
) -> tuple[list[str], list[ContainerFile]]:
    """The task's command line and the files to write into its container before it starts."""
    symtab = symbols(job_params, task_params, workdir)
    for file in files:  # paths first: a file's data may name another file
        symtab[f"Task.File.{file.name}"] = file_path(file)
    written = [
        ContainerFile(
            path=file_path(file),
            data=_convert_line_endings(
                DataString(file.data).resolve(symtab=symtab), file.end_of_line
            ).encode(),
            mode=RUNNABLE if file.runnable else READ_WRITE,
        )
        for file in files
    ]
    return [ArgString(part).resolve(symtab=symtab) for part in command], written
