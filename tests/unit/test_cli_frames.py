"""``hpcdock retry --frames LIST``: the frame list is parsed, or refused as bad usage (exit 2)."""

from __future__ import annotations

import pytest
from hpcdock import cli


@pytest.mark.parametrize(
    "text, frames",
    [("17", [17]), ("17,40-42", [17, 40, 41, 42]), ("-3--1,2", [-3, -2, -1, 2]), (" 5 , 7-8", [5, 7, 8])],
)
def test_frame_lists(text: str, frames: list[int]) -> None:
    assert cli._parser().parse_args(["retry", "4", f"--frames={text}"]).frames == frames


@pytest.mark.parametrize(
    "argv",
    [
        ["retry", "4", "--frames", "x"],
        ["retry", "4", "--frames", "9-3"],
        ["retry", "4", "--frames", "1,"],
        ["retry", "4", "--frames", "1", "--flagged"],
        ["retry", "4", "--frames", "1-2000000"],
    ],
)
def test_bad_frame_lists_are_usage_errors(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli._parser().parse_args(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--frames" in err or "--flagged" in err


def test_step_alone_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--url", "unix:///nonexistent.sock", "retry", "4", "--step", "render"]) == 2
    assert "--step goes with --frames or --flagged" in capsys.readouterr().err
