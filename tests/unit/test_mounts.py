"""What a task container may mount: the symlink-free walk, allowed roots, protected paths."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import yaml
from hpcdock_service.bundle_loader import load_bundle, prepare_output_dirs
from hpcdock_service.config import ServiceConfig
from hpcdock_service.errors import BadInput
from hpcdock_service.mounts import (
    MountPolicy,
    PathRefused,
    bound_mismatches,
    make_dirs,
    open_nofollow,
    verify,
)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A home directory of its own, with the XDG directories at their defaults inside it."""
    home = tmp_path / "home"
    (home / "shows" / "ep1" / "out").mkdir(parents=True)
    monkeypatch.setenv("HOME", str(home))
    for var in ("XDG_CONFIG_HOME", "XDG_STATE_HOME", "XDG_RUNTIME_DIR"):
        monkeypatch.delenv(var, raising=False)
    return home


def refusal(policy: MountPolicy, path: Path, **kw) -> str:
    with pytest.raises(PathRefused) as err:
        policy.check(str(path), **kw)
    assert err.value.path == str(path)
    return str(err.value)


@pytest.mark.parametrize("link", ["shows", "shows/ep1", "shows/ep1/out"])
def test_a_symlink_in_any_component_is_refused_and_named(home: Path, tmp_path: Path, link: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    policy = MountPolicy.build([str(home)])
    target = home / "shows" / "ep1" / "out"
    policy.check(str(target))  # a plain directory passes

    swapped = home / link
    os.rename(swapped, tmp_path / "moved")
    os.symlink(outside, swapped)
    why = refusal(policy, target)
    assert f"{swapped} is a symbolic link" in why


def test_a_symlink_to_a_place_inside_the_roots_is_refused_too(home: Path) -> None:
    policy = MountPolicy.build([str(home)])
    (home / "shows" / "ep2").symlink_to(home / "shows" / "ep1")
    assert "is a symbolic link" in refusal(policy, home / "shows" / "ep2" / "out")


def test_missing_paths_and_odd_files(home: Path, tmp_path: Path) -> None:
    policy = MountPolicy.build([str(home)])
    assert "does not exist" in refusal(policy, home / "shows" / "nope")
    policy.check(str(home / "shows" / "nope" / "out"), must_exist=False)  # an output directory made later
    (home / "shows" / "ep1" / "scene.hip").write_text("hip")
    policy.check(str(home / "shows" / "ep1" / "scene.hip"))  # a file may be mounted ...
    assert "is a file" in refusal(
        policy, home / "shows" / "ep1" / "scene.hip" / "x"
    )  # ... not walked through
    os.mkfifo(home / "shows" / "fifo")
    assert "not a directory or a regular file" in refusal(policy, home / "shows" / "fifo")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(home / "shows" / "sock"))
        assert "not a directory or a regular file" in refusal(policy, home / "shows" / "sock")
    assert "normalised" in refusal(policy, Path(str(home) + "/shows/../shows/ep1"))
    with pytest.raises(PathRefused, match="normalised"):
        open_nofollow("relative/path")


def test_allowed_roots_are_resolved_once_and_enforced(home: Path, tmp_path: Path) -> None:
    (tmp_path / "projects").mkdir()
    (tmp_path / "projects-link").symlink_to(tmp_path / "projects")
    policy = MountPolicy.build([str(tmp_path / "projects-link")])
    assert policy.roots == (str(tmp_path / "projects"),)
    policy.check(str(tmp_path / "projects"))
    assert "outside the allowed roots" in refusal(policy, home / "shows")
    assert "outside the allowed roots" in refusal(MountPolicy.build([]), home / "shows")


def test_protected_paths_their_insides_and_their_parents_are_refused(home: Path, tmp_path: Path) -> None:
    state = home / "shows" / "state"
    (state / "logs").mkdir(parents=True)
    policy = MountPolicy.build([str(home)], protected=[str(state)])
    assert "keeps to itself" in refusal(policy, state)
    assert f"is inside {state}" in refusal(policy, state / "logs")
    assert f"contains {state}" in refusal(policy, home / "shows")  # a parent would expose it
    policy.check(str(home / "shows" / "ep1"))  # a sibling is fine


def test_hidden_home_entries_startup_code_and_the_home_itself_are_never_mounted(home: Path) -> None:
    for name in (".ssh", ".config/hpcdock", "bin", "houdini20.5/scripts", "shows/.git"):
        (home / name).mkdir(parents=True)
    policy = MountPolicy.build([str(home)])
    assert "hidden entry" in refusal(policy, home / ".ssh")
    assert "hidden entry" in refusal(policy, home / ".config" / "hpcdock")
    assert "programs run outside containers" in refusal(policy, home / "bin")
    assert "programs run outside containers" in refusal(policy, home / "houdini20.5" / "scripts")
    assert f"contains {home}" in refusal(policy, home)
    policy.check(str(home / "shows"))  # a project may well hold hidden files of its own
    policy.check(str(home / "shows" / ".git"))


def test_default_config_never_mounts_the_service_files_whatever_the_roots(home: Path) -> None:
    config = ServiceConfig(allowed_roots=[str(home), "/"])
    policy = config.mount_policy("unix:///run/engine/podman.sock")
    for path in (
        home / ".config" / "hpcdock",
        home / ".config" / "hpcdock" / "token",
        home / ".local" / "state" / "hpcdock",
        Path("/run/engine/podman.sock"),
        Path("/run/engine"),
    ):
        with pytest.raises(PathRefused):
            policy.check_place(str(path))
    assert ServiceConfig().allowed_roots == [str(home), "/tmp", "/var/tmp"]
    shown = policy.to_json()  # what --check prints
    assert shown["allowed_roots"] == ["/", str(home)] and "/run/engine" in shown["never_mounted"]
    ServiceConfig().mount_policy().check(str(home / "shows" / "ep1" / "out"))


def test_protection_follows_moved_xdg_directories(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "shows" / "cfg"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(home / "shows" / "run"))
    policy = ServiceConfig(state_dir=str(home / "shows" / "st")).mount_policy()
    for name in ("cfg/hpcdock", "run", "st"):
        with pytest.raises(PathRefused, match="keeps to itself"):
            policy.check_place(str(home / "shows" / name))
    with pytest.raises(PathRefused, match="contains"):
        policy.check_place(str(home / "shows"))


def test_make_dirs_never_creates_through_a_symlink(home: Path, tmp_path: Path) -> None:
    policy = MountPolicy.build([str(home)])
    make_dirs(str(home / "shows" / "ep3" / "out" / "deep"), policy)
    assert (home / "shows" / "ep3" / "out" / "deep").is_dir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (home / "shows" / "ep4").symlink_to(outside)
    with pytest.raises(PathRefused, match="ep4 is a symbolic link"):
        make_dirs(str(home / "shows" / "ep4" / "out"), policy)
    assert list(outside.iterdir()) == []


def test_verify_remakes_a_removed_output_directory_but_not_a_removed_input(home: Path) -> None:
    policy = MountPolicy.build([str(home)])
    out = home / "shows" / "ep1" / "out"
    before = verify(policy, str(out), writable=True)
    out.rmdir()
    assert verify(policy, str(out), writable=True)[0] == before[0]
    assert out.is_dir()
    out.rmdir()
    with pytest.raises(PathRefused, match="does not exist"):
        verify(policy, str(out), writable=False)


def test_identity_matches_what_mountinfo_shows_for_the_walked_directory(home: Path) -> None:
    """The (device, root) of a path is read from the mount its walk ends on, as a bind would show it."""
    path = str(home / "shows" / "ep1")
    device, root = verify(MountPolicy.build([str(home)]), path, writable=False)
    st = os.stat(path)
    assert device == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    assert root.endswith("/shows/ep1")
    line = f"900 1 {device} {root.replace(' ', chr(92) + '040')} /work\\040dir rw - ext4 x rw\n"
    assert bound_mismatches(line, [(path, "/work dir", (device, root))]) == []
    other = f"901 900 {device} /elsewhere /work\\040dir rw - ext4 x rw\n"
    (problem,) = bound_mismatches(line + other, [(path, "/work dir", (device, root))])
    assert "bound /elsewhere" in problem and path in problem
    (problem,) = bound_mismatches(line, [(path, "/other", (device, root))])
    assert "not mounted at /other" in problem


def _bundle(root: Path, settings: dict) -> str:
    root.mkdir(parents=True, exist_ok=True)
    (root / "template.yaml").write_text(
        yaml.safe_dump(
            {
                "specificationVersion": "jobtemplate-2023-09",
                "name": "shot",
                "steps": [{"name": "render", "script": {"actions": {"onRun": {"command": "render"}}}}],
            }
        )
    )
    (root / "hpcdock.yaml").write_text(yaml.safe_dump({"image": "img:1", **settings}))
    return str(root)


def test_the_bundle_loader_applies_the_same_rules(home: Path, tmp_path: Path) -> None:
    policy = ServiceConfig().mount_policy()
    (home / ".config" / "hpcdock").mkdir(parents=True)
    bundle = _bundle(
        home / "shows" / "ep1" / "job",
        {"mounts": [{"source": str(home / ".config" / "hpcdock"), "target": "/cfg", "readonly": False}]},
    )
    with pytest.raises(BadInput) as err:
        load_bundle(bundle, mount_policy=policy)
    assert err.value.field == "hpcdock.yaml: mounts[0].source" and "never mount" in err.value.message
    with pytest.raises(BadInput, match="contains"):
        load_bundle(
            _bundle(home / "shows" / "ep1" / "job", {"mounts": [{"source": str(home)}]}), mount_policy=policy
        )
    with pytest.raises(BadInput) as err:
        load_bundle(_bundle(home / ".config" / "job", {}), mount_policy=policy)
    assert err.value.field == "bundle_dir" and "hidden entry" in err.value.message


def test_an_output_directory_turned_into_a_symlink_before_it_is_made_is_refused(
    home: Path, tmp_path: Path
) -> None:
    policy = MountPolicy.build([str(home)])
    bundle = _bundle(home / "shows" / "ep1" / "job", {"outputs": ["cache/sim"]})
    plan = load_bundle(bundle, mount_policy=policy)
    outside = tmp_path / "outside"
    outside.mkdir()
    (Path(bundle) / "cache").symlink_to(outside)  # planted between the checks and the creation
    with pytest.raises(BadInput, match="cache is a symbolic link"):
        prepare_output_dirs(plan, policy)
    assert list(outside.iterdir()) == []
