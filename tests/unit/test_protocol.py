"""``hpcdock.protocol``: the states, frame-list codecs and reconnect policy both sides share."""

from __future__ import annotations

import ast
import json
import sys
from itertools import groupby
from pathlib import Path

import pytest
from hpcdock import protocol
from hpcdock.protocol import (
    JOB_ACTIVE,
    JOB_FINAL,
    TASK_ACTIVE,
    TASK_FINAL,
    Backoff,
    FrameState,
    JobState,
    TaskState,
    decode_frames,
    encode_frames,
    format_frame_list,
    frame_runs,
    parse_frame_list,
)

LISTS = [
    [17],
    [-2],
    [0],
    [1, 2, 3],
    [-5, -4, -3],
    [-3, -2, -1, 0, 1],
    [1, 2, 3, 7, 9, 10],
    [-10, -8, 4],
    list(range(1, 100_001)),
    [5, 3],
    [4, 4, 5],
    [],
]


def runs_oracle(frames: list[int]) -> list[list[int]]:
    """Consecutive runs told apart by frame minus position: equal within one run."""
    out = []
    for _, group in groupby(enumerate(frames), key=lambda p: p[1] - p[0]):
        fs = [f for _, f in group]
        out.append([fs[0], fs[-1]])
    return out


@pytest.mark.parametrize("frames", LISTS, ids=lambda f: ",".join(map(str, f[:6])) or "empty")
def test_stored_frames_round_trip_as_exactly_json_dumps_of_the_runs(frames: list[int]) -> None:
    text = encode_frames(frames)
    # the store reads runs back in SQL (json_extract(value, '$[0]')): the text must be json.dumps'
    assert text == json.dumps(runs_oracle(frames))
    assert decode_frames(text) == frames


def test_stored_frames_text() -> None:
    assert encode_frames([1, 2, 3, 7]) == "[[1, 3], [7, 7]]"
    assert encode_frames([-12]) == "[[-12, -12]]"
    assert decode_frames("[[-12, -10]]") == [-12, -11, -10]
    assert decode_frames("[[1, 2], [-4, -4]]") == [1, 2, -4]


def test_runs_merge_across_gaps_up_to_gap() -> None:
    assert frame_runs([1, 3, 9], gap=8) == [(1, 9)]
    assert frame_runs([1, 3, 12], gap=8) == [(1, 3), (12, 12)]
    assert frame_runs([-9, -1, 0], gap=1) == [(-9, -9), (-1, 0)]


@pytest.mark.parametrize(
    "frames, text",
    [
        ([17], "17"),
        ([1, 2, 3, 5], "1-3,5"),
        ([-5, -4, -3, 0, 2, 3, 4], "-5--3,0,2-4"),
        ([9, 1, 2, 2], "1-2,9"),
        ([-1], "-1"),
    ],
)
def test_frame_lists_format_and_parse_back(frames: list[int], text: str) -> None:
    assert format_frame_list(frames) == text
    assert parse_frame_list(text) == sorted(set(frames))


def test_frame_lists_take_openjd_steps_as_chunks_hand_them_over() -> None:
    assert parse_frame_list("1-9:4") == [1, 5, 9]
    assert parse_frame_list("-9--1:4,2") == [-9, -5, -1, 2]
    assert parse_frame_list(" 1 - 4 ") == [1, 2, 3, 4]
    assert parse_frame_list("1-2000000:2")[-1] == 1999999


@pytest.mark.parametrize(
    "text, part",
    [
        ("x", "'x'"),
        ("9-3", "'9-3'"),
        ("1,", "''"),
        ("1-2000000", "'1-2000000'"),
        ("-", "'-'"),
        ("3--5", "'3--5'"),
        ("1-9:0", "'1-9:0'"),
        ("5:2", "'5:2'"),
        ("1-9:x", "'1-9:x'"),
        ("1-", "'1-'"),
    ],
)
def test_bad_frame_lists_name_the_bad_part(text: str, part: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_frame_list(text)
    assert str(exc.value).startswith(part)


def test_backoff_doubles_to_its_maximum_and_resets() -> None:
    backoff = Backoff(first=0.2, maximum=5.0)
    assert [backoff.next() for _ in range(7)] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0])
    backoff.reset()
    assert [backoff.next() for _ in range(3)] == pytest.approx([0.2, 0.4, 0.8])
    default = Backoff()
    assert default.next() == protocol.RECONNECT_FIRST_S
    assert max(default.next() for _ in range(20)) == protocol.RECONNECT_MAX_S
    assert Backoff(first=1.0, maximum=0.5).next() == 0.5


def test_states_are_the_strings_the_api_sends() -> None:
    assert [s.value for s in JobState] == ["queued", "running", "succeeded", "failed", "canceled"]
    assert [s.value for s in TaskState] == [
        "pending",
        "running",
        "succeeded",
        "failed",
        "canceled",
        "replaced",
    ]
    assert [s.value for s in FrameState] == ["waiting", "running", "done", "failed"]
    assert JobState("canceled") is JobState.CANCELED and TaskState.REPLACED == "replaced"
    assert "succeeded" in JOB_FINAL and "replaced" not in JOB_FINAL and "replaced" in TASK_FINAL
    assert JOB_ACTIVE == {"queued", "running"} and TASK_ACTIVE == {"pending", "running"}
    assert json.dumps({"state": JobState.FAILED}) == '{"state": "failed"}'


@pytest.mark.skipif(sys.version_info < (3, 10), reason="sys.stdlib_module_names is 3.10+")
def test_the_module_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(protocol.__file__).read_text())
    roots = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    roots |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert roots and roots <= set(sys.stdlib_module_names), roots
