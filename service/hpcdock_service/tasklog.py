"""A task's log on disk: written as the output arrives, capped per attempt with the end kept.

Every attempt of a task appends to one file (the store remembers where each attempt
begins). Output goes to disk chunk by chunk and is never gathered in memory, whatever a
task prints. When one attempt's output passes the cap, its older part is dropped: a line
at the start of the attempt's output says how many bytes went, and the newest half of the
cap is kept. Dropping half the cap at a time keeps the copying proportional to the output.

Readers (``GET /v1/tasks/{id}/log?offset=N``, ``hpcdock logs -f``, the panel) address the
log by offsets that never move: an offset counts bytes as the task printed them, so a
follower's offset stays valid when a cut happens behind it, and one whose next bytes were
dropped resumes right after them. The file and those offsets differ by the dropped bytes;
each cut is recorded in a small side file ``<log>.cuts`` as the file position where the
kept output resumes and the number of bytes missing there.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import NamedTuple, Optional

MIB = 1024 * 1024
# The most one read returns: what a log request holds in memory, times the API's worker threads.
READ_LIMIT = 8 * MIB
_COPY_BLOCK = MIB
# A cut moves bytes that a reader may be reading: readers and cuts of one log take the same
# lock. A fixed set of locks, picked by path, serves any number of tasks.
_LOCKS = [threading.Lock() for _ in range(32)]

Cut = tuple[int, int]  # file position where the kept output resumes, bytes missing there


def _lock(path: Path) -> threading.Lock:
    return _LOCKS[hash(str(path)) % len(_LOCKS)]


def _cuts_path(path: Path) -> Path:
    return path.with_name(path.name + ".cuts")


def _read_cuts(path: Path) -> list[Cut]:
    try:
        return [(int(p), int(d)) for p, d in json.loads(_cuts_path(path).read_text())]
    except FileNotFoundError:
        return []
    except (ValueError, TypeError):  # a damaged side file: offsets degrade to file positions
        return []


def _write_cuts(path: Path, cuts: list[Cut]) -> None:
    side = _cuts_path(path)
    if not cuts:
        side.unlink(missing_ok=True)
        return
    tmp = side.with_name(side.name + ".tmp")
    tmp.write_text(json.dumps(cuts))
    os.replace(tmp, side)


def truncate(path: Path, position: int) -> None:
    """Drop everything from file ``position`` on (an attempt that is run again from its start)."""
    with _lock(path):
        if path.exists() and path.stat().st_size > position:
            os.truncate(path, position)
        cuts = _read_cuts(path)
        kept = [c for c in cuts if c[0] <= position]
        if kept != cuts:
            _write_cuts(path, kept)


def append_line(path: Path, text: str) -> None:
    """Append one line of the service's own (an attempt's header) to the log."""
    with open(path, "ab") as fh:
        fh.write(text.encode("utf-8", "replace") + b"\n")


class LogPart(NamedTuple):
    data: bytes  # up to the limit asked for
    next_offset: int  # the offset to ask for next (past a cut, more than offset + len(data))
    size: int  # the log's size in offsets: bytes as the task printed them, cuts included


def read(path: Path, offset: int, limit: int) -> LogPart:
    """Up to ``limit`` bytes from ``offset``; the offset to ask for next; the log's size in offsets.

    A read stops at a cut, so the bytes returned always lie side by side in the log as printed.
    """
    with _lock(path):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return LogPart(b"", offset, 0)
        try:
            size = os.fstat(fd).st_size
            cuts = _read_cuts(path)
            shift, end = 0, size  # offset minus file position, and where the current stretch ends
            for resume, missing in cuts:
                if offset < resume + shift:
                    end = resume
                    break
                offset = max(offset, resume + shift + missing)  # inside the dropped bytes: skip them
                shift += missing
            position = offset - shift
            data = os.pread(fd, max(0, min(limit, end - position)), position) if position < end else b""
        finally:
            os.close(fd)
    return LogPart(data, offset + len(data), size + sum(missing for _, missing in cuts))


class AttemptLog:
    """One attempt's output, appended to the task's log under ``cap`` bytes (the end kept)."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.cap = cap
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        self.start = self.end = os.fstat(self._fd).st_size  # the attempt's output begins here
        self._cut: Optional[Cut] = None  # this attempt's cut, once there is one
        self._cuts_before = [c for c in _read_cuts(path) if c[0] <= self.start]
        self.dropped = 0

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> AttemptLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.pwrite(self._fd, view, self.end)
            self.end += n
            view = view[n:]
        if self.end - self.start > self.cap:
            self._drop_head()

    def _marker(self, dropped: int) -> bytes:
        # Fixed width, so a later cut of the same attempt rewrites it in place.
        return (
            f"--- hpcdock: {dropped:>20} bytes of this attempt's output dropped here "
            f"(each attempt keeps the last part of its log, up to {self.cap} bytes) ---\n"
        ).encode()

    def _drop_head(self) -> None:
        marker_len = len(self._marker(0))
        keep = max(self.cap // 2 - marker_len, 0)
        source = self.end - keep
        head = os.pread(self._fd, min(keep, 64 * 1024), source)
        newline = head.find(b"\n")
        if newline >= 0:  # start the kept part at a line start when one is near
            source += newline + 1
        dest = self.start + marker_len
        missing = source - dest + (self._cut[1] if self._cut else 0)
        self.dropped = missing + marker_len  # the marker itself stands in for printed bytes
        with _lock(self.path):
            os.pwrite(self._fd, self._marker(self.dropped), self.start)
            length = self.end - source
            done = 0
            while done < length:  # moving down, block by block: never reads what it overwrote
                block = os.pread(self._fd, min(_COPY_BLOCK, length - done), source + done)
                os.pwrite(self._fd, block, dest + done)
                done += len(block)
            self.end = dest + length
            os.ftruncate(self._fd, self.end)
            self._cut = (dest, missing)
            _write_cuts(self.path, [*self._cuts_before, self._cut])
