"""Which host paths a task container may mount, checked without following a single symlink.

A render task is untrusted code with write access to its output directories, and its
containers come and go: the next step, a retry, another job mounts paths that an earlier
task could have changed. A path checked once as a string is therefore worth nothing at
the next container creation (a task swaps ``out/cache`` for a symlink to ``~/.ssh`` and
the engine follows it). So every check here walks the path from ``/`` one component at
a time with ``O_PATH | O_NOFOLLOW`` directory descriptors and refuses as soon as one
component is a symlink; the bundle loader calls it at submit and the engine again at
every container creation, right before the engine binds the path.

What may be mounted (:class:`MountPolicy`):

- only paths inside an allowed root (a root's own symlinks are resolved once, when the
  policy is built: the admin chose them, and a task cannot reach them);
- never a protected path, nothing inside one and nothing that contains one: hpcdock's own
  config directory (token, ``service.yaml``), its state directory (store, logs, an embedded
  Podman's socket), the token file, the engine's socket directory and ``$XDG_RUNTIME_DIR``
  (a container that reaches the engine's socket owns the account);
- never a hidden entry of the home directory or of ``/tmp`` and ``/var/tmp`` (``~/.ssh``,
  ``~/.bashrc``, ``~/.config``, ``~/.local``, ``/tmp/.X11-unix`` ...), nor ``~/bin`` or
  Houdini's preference directories (``~/houdini20.5``: scripts Houdini runs at start), nor
  the home or a temporary directory as a whole: no artist's project lives there, and a
  writable mount of any of them is code execution on the host;
- only directories and regular files (no sockets, devices or FIFOs).

The path a task container gets is then the same canonical, symlink-free path everywhere;
:func:`mount_identity` says what the engine's bind must show in the container's mountinfo
for the engine to prove it bound exactly the directory that was checked.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

TEMP_DIRS = ("/tmp", "/var/tmp")
_OPEN_FLAGS = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC


class PathRefused(Exception):
    """A path that may not be mounted; ``path`` is the path asked for, ``reason`` why (naming it)."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(reason)
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class MountPolicy:
    """Allowed roots and protected paths, all canonical (see the module docstring)."""

    roots: tuple[str, ...]
    protected: tuple[str, ...]
    hidden_in: tuple[str, ...]  # directories whose hidden entries are protected too
    home: str
    roots_are: str = "the allowed roots"  # what the roots are, as a refusal names them

    @classmethod
    def build(
        cls, allowed_roots: Iterable[str], protected: Iterable[str] = (), roots_are: str = "the allowed roots"
    ) -> MountPolicy:
        home = os.path.realpath(os.path.expanduser("~"))
        hidden = {home, *(os.path.realpath(d) for d in TEMP_DIRS)}
        return cls(
            roots=tuple(sorted({os.path.realpath(r) for r in allowed_roots})),
            protected=tuple(sorted({os.path.realpath(p) for p in protected})),
            hidden_in=tuple(sorted(hidden)),
            home=home,
            roots_are=roots_are,
        )

    def describe_roots(self) -> str:
        return ", ".join(self.roots) or "none configured"

    def to_json(self) -> dict[str, Any]:
        """What ``hpcdock-service --check`` shows an admin."""
        return {
            "allowed_roots": list(self.roots),
            "never_mounted": list(self.protected),
            "never_mounted_hidden_entries_of": list(self.hidden_in),
            "never_mounted_in_home": _HOME_CODE.pattern,
        }

    def check(self, path: str, *, must_exist: bool = True) -> None:
        """Raise :class:`PathRefused` unless canonical ``path`` passes every rule.

        With ``must_exist`` false the path may not exist yet (an output directory created
        later); what exists of it is walked all the same.
        """
        self.check_place(path)
        fd = open_nofollow(path, missing_ok=not must_exist)
        if fd is not None:
            os.close(fd)

    def check_place(self, path: str) -> None:
        """The rules on where ``path`` lies, without looking at the file system."""
        if not os.path.isabs(path) or os.path.normpath(path) != path:
            raise PathRefused(path, f"{path!r} is not an absolute, normalised path")
        if not any(_inside(path, root) for root in self.roots):
            raise PathRefused(path, f"{path} is outside {self.roots_are} ({self.describe_roots()})")
        for p in self.protected:
            if _inside(path, p):
                raise PathRefused(
                    path, f"{path} is inside {p}, which hpcdock keeps to itself and never mounts"
                )
            if _inside(p, path):
                raise PathRefused(
                    path, f"{path} contains {p}, which hpcdock keeps to itself and never mounts"
                )
        for d in self.hidden_in:
            if _inside(d, path):
                raise PathRefused(path, f"{path} contains {d} and its hidden files, which are never mounted")
            if _inside(path, d) and _first_name(path, d).startswith("."):
                raise PathRefused(
                    path,
                    f"{path} is in a hidden entry of {d} (configuration, keys, start-up files), "
                    "which is never mounted",
                )
        if _inside(path, self.home) and _HOME_CODE.fullmatch(_first_name(path, self.home)):
            raise PathRefused(
                path,
                f"{path} is in {self.home}/{_first_name(path, self.home)}, whose programs run "
                "outside containers; it is never mounted",
            )


_HOME_CODE = re.compile(r"bin|houdini\d.*")


def _first_name(path: str, parent: str) -> str:
    """The first component of ``path`` below ``parent`` ('' for ``parent`` itself)."""
    return path[len(parent) :].lstrip("/").split("/", 1)[0]


def _inside(path: str, parent: str) -> bool:
    """Whether ``path`` is ``parent`` or below it (both normalised, absolute)."""
    return path == parent or parent == "/" or path.startswith(parent + "/")


def open_nofollow(path: str, *, missing_ok: bool = False) -> Optional[int]:
    """An ``O_PATH`` descriptor of ``path``, reached from ``/`` without following any symlink.

    Every component but the last must be a directory; the last a directory or a regular
    file. Each step is ``openat`` on the descriptor of the step before, so a component
    swapped while we walk cannot redirect the walk. Returns None when the path (or a
    parent) does not exist and ``missing_ok`` is set.
    """
    parts = [p for p in path.split("/") if p]
    if not path.startswith("/") or any(p in (".", "..") for p in parts):
        raise PathRefused(path, f"{path!r} is not an absolute, normalised path")
    fd = os.open("/", _OPEN_FLAGS | os.O_DIRECTORY)
    try:
        for i, name in enumerate(parts):
            so_far = "/" + "/".join(parts[: i + 1])
            try:
                # O_DIRECTORY also triggers an automount (autofs project shares); O_PATH alone
                # would step into the empty directory under it. A symlink fails it too.
                child = os.open(name, _OPEN_FLAGS | os.O_DIRECTORY, dir_fd=fd)
            except NotADirectoryError:
                child = _open_non_directory(path, name, fd, so_far, last=i == len(parts) - 1)
            except FileNotFoundError:
                if missing_ok:
                    os.close(fd)
                    return None
                raise PathRefused(path, f"{so_far} does not exist") from None
            except OSError as exc:
                raise PathRefused(path, f"cannot open {so_far}: {exc.strerror}") from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _open_non_directory(path: str, name: str, dir_fd: int, so_far: str, last: bool) -> int:
    """Open what ``name`` is (with O_NOFOLLOW, a symlink itself); only a regular file at the end passes."""
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise PathRefused(path, f"cannot open {so_far}: {exc.strerror}") from None
    mode = os.fstat(fd).st_mode
    if last and stat.S_ISREG(mode):
        return fd
    os.close(fd)
    if stat.S_ISLNK(mode):
        raise PathRefused(
            path,
            f"{so_far} is a symbolic link; mounted paths must not contain any "
            "(a task may have replaced a directory by one)",
        )
    kind = "a file" if stat.S_ISREG(mode) else "not a directory or a regular file"
    raise PathRefused(path, f"{so_far} is {kind}")


def make_dirs(path: str, policy: MountPolicy) -> None:
    """Create directory ``path`` and its missing parents without following any symlink.

    ``os.makedirs`` would follow a symlink planted on the way and create (and later mount)
    a directory elsewhere; here each missing component is made with ``mkdirat`` under the
    descriptor of its verified parent.
    """
    policy.check_place(path)
    parts = [p for p in path.split("/") if p]
    fd = os.open("/", _OPEN_FLAGS | os.O_DIRECTORY)
    try:
        for i, name in enumerate(parts):
            so_far = "/" + "/".join(parts[: i + 1])
            try:
                os.mkdir(name, 0o777, dir_fd=fd)
            except FileExistsError:
                pass
            except OSError as exc:
                raise PathRefused(path, f"cannot create {so_far}: {exc.strerror}") from None
            try:  # O_DIRECTORY with O_NOFOLLOW: a symlink fails here instead of being opened
                child = os.open(name, _OPEN_FLAGS | os.O_DIRECTORY, dir_fd=fd)
            except OSError:
                raise PathRefused(path, f"{so_far} is a symbolic link or not a directory") from None
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


# -- proving what the engine bound ----------------------------------------------------------


@dataclass(frozen=True)
class MountInfo:
    """One line of ``/proc/<pid>/mountinfo``: which directory of which filesystem is where."""

    mount_id: int
    device: str  # major:minor
    root: str  # the bound directory, relative to its filesystem's root
    mount_point: str


def parse_mountinfo(text: str) -> list[MountInfo]:
    entries = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 5:
            continue
        entries.append(MountInfo(int(fields[0]), fields[2], _unescape(fields[3]), _unescape(fields[4])))
    return entries


def _unescape(text: str) -> str:
    """mountinfo writes space, tab, newline and backslash as ``\\ooo``."""
    if "\\" not in text:
        return text
    return (
        text.encode("latin-1").decode("unicode_escape").encode("latin-1").decode("utf-8", "surrogateescape")
    )


Identity = tuple[str, str]  # (device major:minor, directory relative to its filesystem's root)
Bound = tuple[str, str, Identity]  # (host path, container target, identity of the checked host path)


def verify(policy: MountPolicy, path: str, *, writable: bool) -> Identity:
    """Check ``path`` right before an engine binds it; return what the bind must show.

    A missing writable directory (a task removed its own output directory) is made again
    the safe way; anything else missing is refused.
    """
    policy.check_place(path)
    fd = open_nofollow(path, missing_ok=writable)
    if fd is None:
        make_dirs(path, policy)
        fd = open_nofollow(path)
    assert fd is not None
    try:
        return _identity(fd, path)
    finally:
        os.close(fd)


def _identity(fd: int, path: str) -> Identity:
    """The (device, filesystem-relative root) a bind mount of ``fd`` shows in a mountinfo.

    Found from the mount the symlink-free walk ended on (its ``mnt_id``), so an engine that
    bound anything else, through a symlink swapped in after the check, shows another pair.
    """
    with open(f"/proc/self/fdinfo/{fd}") as fh:
        mnt_id = next(int(line.split()[1]) for line in fh if line.startswith("mnt_id:"))
    with open("/proc/self/mountinfo") as fh:
        mount = next(m for m in parse_mountinfo(fh.read()) if m.mount_id == mnt_id)
    rest = path[len(mount.mount_point) :].lstrip("/") if mount.mount_point != "/" else path.lstrip("/")
    return mount.device, os.path.normpath(os.path.join(mount.root, rest))


def bound_mismatches(mountinfo: str, expected: Sequence[Bound]) -> list[str]:
    """Which of ``expected`` (path, target, identity) a container's mountinfo does not show bound.

    The topmost mount at each target must be the verified directory itself.
    """
    at = {}
    for entry in parse_mountinfo(mountinfo):
        at[entry.mount_point] = entry  # later lines are mounted on top of earlier ones
    problems = []
    for path, target, (device, root) in expected:
        entry = at.get(os.path.normpath(target))
        if entry is None:
            problems.append(f"{path}: not mounted at {target}")
        elif (entry.device, os.path.normpath(entry.root)) != (device, root):
            problems.append(
                f"{path}: the engine bound {entry.root} (device {entry.device}) at {target}, "
                f"not the checked directory {root} (device {device})"
            )
    return problems
