"""The Slurm engine's pure parts: the sbatch line, Slurm's words for job states and exit codes,
gres parsing, the exit-status record, the output file's tail, and the ``slurm:`` config section."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
from hpcdock_service.config import SlurmConfig, load_config
from hpcdock_service.engines.base import RunState
from hpcdock_service.engines.node_run import allocated_gpus, request_from_spec
from hpcdock_service.engines.slurm import (
    ExitRecord,
    Spool,
    _tail_offset,
    final_reason,
    gres_gpus,
    map_state,
    parse_exit_code,
    parse_squeue,
    request_to_spec,
    sbatch_command,
)
from hpcdock_service.errors import BadInput


def _options(cmd: list[str]) -> dict[str, str]:
    return dict(part[2:].split("=", 1) for part in cmd[1:] if part.startswith("--") and "=" in part)


def test_sbatch_line_names_the_job_after_the_attempt_and_runs_the_node_runner(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    cmd = sbatch_command(SlurmConfig(), "hpcdock-s1-t3-a1", spool, "/venv/bin/python", "hpcdock task=3")
    opts = _options(cmd)
    assert cmd[0] == "sbatch" and "--parsable" in cmd and "--no-requeue" in cmd
    assert opts["job-name"] == "hpcdock-s1-t3-a1"
    assert opts["output"] == str(tmp_path / "hpcdock-s1-t3-a1.out")
    assert opts["chdir"] == str(tmp_path)
    assert opts["comment"] == "hpcdock task=3"
    assert not {"partition", "account", "qos", "gres", "cpus-per-task"} & set(opts)  # the cluster's defaults
    assert shlex.split(opts["wrap"]) == [
        "exec",
        "/venv/bin/python",
        "-m",
        "hpcdock_service.engines.node_run",
        str(tmp_path / "hpcdock-s1-t3-a1.json"),
    ]


def test_sbatch_line_carries_the_config_gpus_and_cpus(tmp_path: Path) -> None:
    settings = SlurmConfig(
        partition="gpu", account="fx", qos="high", sbatch_args=("--time=60", "--constraint=avx2")
    )
    cmd = sbatch_command(settings, "n", Spool(tmp_path), "/p y/python", "c", gpus=2, cpus=4, memory_mib=3072)
    opts = _options(cmd)
    assert (opts["partition"], opts["account"], opts["qos"]) == ("gpu", "fx", "high")
    assert opts["gres"] == "gpu:2" and opts["cpus-per-task"] == "4" and opts["mem"] == "3072M"
    assert cmd[-3:-1] == ["--time=60", "--constraint=avx2"]  # extra arguments as given, before the script
    assert shlex.split(opts["wrap"])[1] == "/p y/python"  # quoted: a path with a space stays one word


@pytest.mark.parametrize(
    ("word", "state"),
    [
        ("PENDING", RunState.QUEUED),
        ("CONFIGURING", RunState.QUEUED),
        ("RUNNING", RunState.RUNNING),
        ("COMPLETING", RunState.RUNNING),
        ("SUSPENDED", RunState.RUNNING),
        ("COMPLETED", RunState.EXITED),
        ("FAILED", RunState.EXITED),
        ("CANCELLED by 1023", RunState.EXITED),
        ("NODE_FAIL", RunState.EXITED),
        ("TIMEOUT", RunState.EXITED),
        ("OUT_OF_MEMORY", RunState.EXITED),
    ],
)
def test_slurm_states_map_onto_hpcdocks(word: str, state: RunState) -> None:
    assert map_state(word) is state


def test_final_reasons_name_what_happened() -> None:
    assert "node" in final_reason("NODE_FAIL") and "failed" in final_reason("NODE_FAIL")
    assert "canceled" in final_reason("CANCELLED by 0")
    assert "WEIRD" in final_reason("WEIRD")


def test_exit_codes_and_signals() -> None:
    assert parse_exit_code("JobId=5 JobState=FAILED ExitCode=3:0 Foo=1") == 3
    assert parse_exit_code("ExitCode=0:9") == 137  # killed by a signal: as a shell reports it
    assert parse_exit_code("0:0") == 0
    assert parse_exit_code("JobState=PENDING") is None


def test_squeue_listing_keeps_the_newest_job_of_a_name() -> None:
    jobs = parse_squeue(
        "12|hpcdock-a|COMPLETED|None\n15|hpcdock-a|RUNNING|None\n9|x|PENDING|Resources\nbad line\n"
    )
    assert jobs["hpcdock-a"].job_id == "15" and jobs["hpcdock-a"].state == "RUNNING"
    assert jobs["x"].reason == "Resources"
    assert len(jobs) == 2


@pytest.mark.parametrize(
    ("gres", "count"),
    [("(null)", 0), ("gpu:4", 4), ("gpu:a100:2(S:0-1)", 2), ("gpu:a100:2,gpu:v100:1", 3), ("mps:100", 0)],
)
def test_gres_gpus(gres: str, count: int) -> None:
    assert gres_gpus(gres) == count


def test_exit_record_round_trips_and_tolerates_old_fields() -> None:
    record = ExitRecord(3, None, oom_killed=True, stopped=False, job_id="77")
    assert ExitRecord.from_json(record.to_json()) == record
    assert ExitRecord.from_json('{"code": null, "error": "x", "extra": 1}') == ExitRecord(None, "x")


def test_unreadable_exit_file_is_an_error_naming_it(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    spool.exit("n").write_text("{not json")
    record = spool.read_exit("n")
    assert record is not None and record.code is None and str(spool.exit("n")) in (record.error or "")
    assert spool.read_exit("missing") is None
    assert spool.names("n") == {"n"} and spool.names("other") == set()


@pytest.mark.parametrize(
    ("text", "lines", "expected"),
    [
        (b"a\nb\nc\n", 1, b"c\n"),
        (b"a\nb\nc\n", 2, b"b\nc\n"),
        (b"a\nb\nc", 1, b"c"),
        (b"a\nb\nc\n", 9, b"a\nb\nc\n"),
        (b"x" * 20000 + b"\nlast\n", 1, b"last\n"),
    ],
)
def test_tail_offset(tmp_path: Path, text: bytes, lines: int, expected: bytes) -> None:
    path = tmp_path / "out"
    path.write_bytes(text)
    with open(path, "rb") as fh:
        fh.seek(_tail_offset(fh, lines))
        assert fh.read() == expected


def test_spec_round_trips_the_request_and_takes_the_gpus_slurm_allocated() -> None:
    from hpcdock_service import mounts
    from hpcdock_service.bundle_loader import Mount
    from hpcdock_service.engines.base import ContainerFile, ContainerLimits, ContainerRequest, GpuGrant

    request = ContainerRequest(
        name="hpcdock-s-t1-a1",
        image="img",
        command=["sh", "-c", "echo"],
        env={"A": "1"},
        workdir="/w",
        mounts=[Mount("/data/in", "/in"), Mount("/data/out", "/out", readonly=False)],
        network=True,
        labels={"hpcdock.task": "1"},
        gpus=GpuGrant(2),
        limits=ContainerLimits(pids=100, memory=1 << 30, vcpus=1.5),
        files=[ContainerFile("/openjd/files/run.sh", b"#!/bin/sh\n\xff", 0o755)],
    )
    spec = request_to_spec(request, mounts.MountPolicy.build(["/data"]), "abc", "/store/abc.tar")
    back = request_from_spec(spec, allocated_gpus({"SLURM_JOB_GPUS": "3,5"}))
    assert back.gpus == GpuGrant(2, (3, 5))
    assert (back.name, back.image, back.command, back.env, back.workdir) == (
        request.name,
        request.image,
        request.command,
        request.env,
        request.workdir,
    )
    assert back.mounts == request.mounts and back.network and back.labels == request.labels
    assert back.limits == request.limits and back.files == request.files
    assert spec["policy"]["roots"] == ["/data"]


def test_allocated_gpus() -> None:
    assert allocated_gpus({"CUDA_VISIBLE_DEVICES": "1"}) == (1,)
    assert allocated_gpus({"SLURM_JOB_GPUS": "0,2", "CUDA_VISIBLE_DEVICES": "0,1"}) == (0, 2)
    assert allocated_gpus({"CUDA_VISIBLE_DEVICES": "GPU-abc"}) == ()
    assert allocated_gpus({}) == ()


# -- the slurm: section of service.yaml -------------------------------------------------------


def _load(tmp_path: Path, text: str):
    path = tmp_path / "service.yaml"
    path.write_text(text)
    return load_config(path)


def test_slurm_section_defaults_and_values(tmp_path: Path) -> None:
    assert _load(tmp_path, "{}\n").slurm == SlurmConfig()
    cfg = _load(
        tmp_path,
        "slurm:\n  partition: render\n  account: fx\n  qos: high\n  sbatch_args: [--time=120, --constraint=avx2]\n"
        "  shared_roots: [/shows]\n  max_jobs: 8\n  spool_dir: /shows/.hpcdock\n",
    ).slurm
    assert cfg == SlurmConfig(
        partition="render",
        account="fx",
        qos="high",
        sbatch_args=("--time=120", "--constraint=avx2"),
        shared_roots=("/shows",),
        spool_dir="/shows/.hpcdock",
        max_jobs=8,
    )


@pytest.mark.parametrize(
    ("text", "field", "says"),
    [
        ("slurm: [a]", "slurm", "mapping"),
        ("slurm: {partiton: x}", "slurm.partiton", "unknown setting"),
        ("slurm: {partition: ''}", "slurm.partition", "non-empty"),
        ("slurm: {qos: 3}", "slurm.qos", "non-empty"),
        ("slurm: {sbatch_args: --time=5}", "slurm.sbatch_args", "list of sbatch options"),
        ("slurm: {sbatch_args: [time=5]}", "slurm.sbatch_args", "starting with '-'"),
        ("slurm: {sbatch_args: [--job-name=x]}", "slurm.sbatch_args", "sets --job-name itself"),
        ("slurm: {sbatch_args: [-Jx]}", "slurm.sbatch_args", "sets -J itself"),
        ("slurm: {sbatch_args: ['--gres=gpu:1']}", "slurm.sbatch_args", "amount.worker.gpu"),
        ("slurm: {shared_roots: [shows]}", "slurm.shared_roots", "absolute paths"),
        ("slurm: {spool_dir: rel}", "slurm.spool_dir", "absolute path"),
        ("slurm: {max_jobs: 0}", "slurm.max_jobs", "whole number"),
        ("slurm: {max_jobs: true}", "slurm.max_jobs", "whole number"),
    ],
)
def test_bad_slurm_settings_are_refused_by_name(tmp_path: Path, text: str, field: str, says: str) -> None:
    with pytest.raises(BadInput) as err:
        _load(tmp_path, text + "\n")
    assert err.value.field.endswith(field) and says in err.value.message


def test_with_slurm_the_mount_policy_refuses_paths_outside_the_shared_roots(tmp_path: Path) -> None:
    from hpcdock_service.mounts import PathRefused

    shared, private = tmp_path / "shared", tmp_path / "private"
    shared.mkdir()
    private.mkdir()
    text = f"allowed_roots: [{tmp_path}]\nslurm: {{shared_roots: [{shared}]}}\n"
    policy = _load(tmp_path, "engine: slurm\n" + text).mount_policy()
    policy.check(str(shared))
    with pytest.raises(PathRefused) as err:
        policy.check(str(private))
    assert str(private) in err.value.reason and "slurm.shared_roots" in err.value.reason
    _load(tmp_path, "engine: local\n" + text).mount_policy().check(str(private))  # one machine: no bound
    _load(tmp_path, f"engine: slurm\nallowed_roots: [{tmp_path}]\n").mount_policy().check(str(private))


def _bare_engine(tmp_path: Path, slurm_says: tuple[str, object]):
    """The engine's result logic over a spool, with what Slurm says of the job given (no Slurm here)."""
    from hpcdock_service.engines.slurm import SlurmEngine

    engine = SlurmEngine.__new__(SlurmEngine)
    engine.spool = Spool(tmp_path)
    engine._job_ids = {"n": "42"}
    engine._slurm_end = lambda job_id, state: slurm_says  # type: ignore[method-assign]
    return engine


def test_a_run_slurm_stopped_fails_naming_why(tmp_path: Path) -> None:
    from hpcdock_service.engines.base import EngineError

    engine = _bare_engine(tmp_path, ("NODE_FAIL", 143))
    with pytest.raises(
        EngineError, match=r"job 42 was stopped: the node running the job failed \(NODE_FAIL\)"
    ):
        engine._result("n", ExitRecord(137, None, stopped=True, job_id="42"))


def test_a_run_the_service_stopped_ends_with_its_code(tmp_path: Path) -> None:
    from hpcdock_service.engines.base import EngineError

    engine = _bare_engine(tmp_path, ("RUNNING", None))
    engine.spool.stop("n").write_text("0\n")  # the service asked for the stop
    assert engine._result("n", ExitRecord(137, None, stopped=True)) == 137
    assert engine._result("n", ExitRecord(0)) == 0
    with pytest.raises(EngineError, match="mount of /x refused"):
        engine._result("n", ExitRecord(None, "mount of /x refused: gone"))
