"""Unit tests for the incremental task-log parser."""

from __future__ import annotations

import pytest
from hpcdock.markers import format_marker
from hpcdock_service.logparse import (
    MAX_LINE_CHARS,
    NO_REASON,
    FrameDone,
    FrameFailed,
    FrameStarted,
    LogParser,
    OpenJDEnv,
    OpenJDFail,
    OpenJDMalformed,
    OpenJDStatus,
    OpenJDUnsetEnv,
    Progress,
    parse_progress,
    task_progress,
)


def feed_all(chunks, **kwargs):
    parser = LogParser(**kwargs)
    updates = []
    for chunk in chunks:
        updates.extend(parser.feed(chunk))
    updates.extend(parser.close())
    return parser, updates


def split_every(data, n):
    return [data[i : i + n] for i in range(0, len(data), n)]


MANTRA_LOG = (
    "mantra: Loading scene\n"
    f"{format_marker('frame-start', 12)}\n"
    "ALF_PROGRESS 0%\n"
    "ALF_PROGRESS 45%\r"
    "ALF_PROGRESS 100%\r\n"
    f"{format_marker('frame-done', 12, '/proj/render/beauty 01.0012.exr')}\n"
    f"{format_marker('frame-start', 13)}\n"
    "ALF_PROGRESS 12.5%\n"
    f"{format_marker('frame-failed', 13, 'license lost: no tokens')}\n"
)

MANTRA_EXPECTED = [
    FrameStarted(12),
    Progress(0.0, 12),
    Progress(45.0, 12),
    Progress(100.0, 12),
    FrameDone(12, "/proj/render/beauty 01.0012.exr"),
    FrameStarted(13),
    Progress(12.5, 13),
    FrameFailed(13, "license lost: no tokens"),
]


def test_whole_log_in_one_chunk():
    parser, updates = feed_all([MANTRA_LOG.encode()])
    assert updates == MANTRA_EXPECTED
    assert parser.done == {12}
    assert parser.failed == {13: "license lost: no tokens"}
    assert parser.outputs == {12: "/proj/render/beauty 01.0012.exr"}
    assert parser.current_frame is None


@pytest.mark.parametrize("size", [1, 2, 3, 7, 16, 64])
def test_any_chunking_gives_the_same_updates(size):
    _, updates = feed_all(split_every(MANTRA_LOG.encode(), size))
    assert updates == MANTRA_EXPECTED


def test_str_chunks_work_like_bytes():
    _, updates = feed_all(split_every(MANTRA_LOG, 5))
    assert updates == MANTRA_EXPECTED


def test_crlf_split_across_chunks_is_one_line_end():
    parser = LogParser()
    assert parser.feed(b"ALF_PROGRESS 10%\r") == [Progress(10.0)]
    assert parser.feed(b"\nALF_PROGRESS 20%\r\n") == [Progress(20.0)]
    assert parser.lines == 2


def test_carriage_return_progress_redraws_are_lines():
    parser = LogParser()
    updates = parser.feed(
        b"Rendering: ALF_PROGRESS 1%\rRendering: ALF_PROGRESS 2%\rRendering: ALF_PROGRESS 3%"
    )
    assert updates == [Progress(1.0), Progress(2.0)]
    assert parser.close() == [Progress(3.0)]


def test_updates_arrive_as_soon_as_the_line_ends():
    parser = LogParser()
    assert parser.feed(b"ALF_PROGRE") == []
    assert parser.feed(b"SS 5") == []
    assert parser.feed(b"0%") == []
    assert parser.feed(b"\n") == [Progress(50.0)]


def test_last_line_without_newline_needs_close():
    parser = LogParser()
    assert parser.feed(format_marker("frame-done", 3, "/out/f.3.png").encode()) == []
    assert parser.close() == [FrameDone(3, "/out/f.3.png")]
    assert parser.close() == []


def test_garbage_bytes_are_replaced_not_fatal():
    data = b"\xff\xfe\x00binary\x80\x81\nALF_PROGRESS 30%\n\xc3\x28 bad utf8 \xed\xa0\x80\n"
    parser, updates = feed_all([data])
    assert updates == [Progress(30.0)]
    assert parser.lines == 3


def test_multibyte_character_split_across_chunks_is_kept():
    path = "/proj/rendu/été.0004.exr"
    data = (format_marker("frame-done", 4, path) + "\n").encode()
    cut = data.index("é".encode()) + 1  # in the middle of the two-byte "é"
    _, updates = feed_all([data[:cut], data[cut:]])
    assert updates == [FrameDone(4, path)]


def test_truncated_character_at_end_of_log_becomes_replacement():
    parser = LogParser()
    parser.feed(b"ALF_PROGRESS 40% \xc3")
    assert parser.close() == [Progress(40.0)]


@pytest.mark.parametrize(
    ("line", "percent"),
    [
        ("ALF_PROGRESS 45%", 45.0),
        ("ALF_PROGRESS 45.75%", 45.75),
        ("ALF_PROGRESS 0.5%", 0.5),
        ("ALF_PROGRESS .5%", 0.5),
        ("ALF_PROGRESS 7 %", 7.0),
        ("[husk] ALF_PROGRESS 99%", 99.0),
        ("ALF_PROGRESS 150%", 100.0),
        ("ALF_PROGRESS 1e3%", 100.0),
        ("ALF_PROGRESS -5%", 0.0),
        ("ALF_PROGRESS 10% ALF_PROGRESS 20%", 20.0),
    ],
)
def test_progress_values_and_clamping(line, percent):
    assert parse_progress(line) == percent


@pytest.mark.parametrize(
    "line",
    [
        "ALF_PROGRESS",
        "ALF_PROGRESS %",
        "ALF_PROGRESS abc%",
        "ALF_PROGRESS 45",
        "progress 45%",
        "ALF_PROGRESSX",
    ],
)
def test_not_progress(line):
    assert parse_progress(line) is None
    _, updates = feed_all([line + "\n"])
    assert updates == []


@pytest.mark.parametrize(
    "line",
    [
        "::hpcdock::frame-start",
        "::hpcdock::frame-start abc",
        "::hpcdock::frame-start 1.5",
        "::hpcdock::frame-begin 12",
        "::hpcdock::frame-done",
        "::hpcdock::",
        "::hpcdock:frame-start 12",
        "hpcdock frame-start 12",
    ],
)
def test_malformed_markers_are_ignored(line):
    parser, updates = feed_all([line + "\n"])
    assert updates == []
    assert parser.current_frame is None and parser.done == set() and parser.failed == {}


def test_marker_with_prefix_text_and_negative_frame():
    _, updates = feed_all(["hython: ::hpcdock::frame-start -3\n", "::hpcdock::frame-done -3\n"])
    assert updates == [FrameStarted(-3), FrameDone(-3, None)]


def test_failed_marker_without_reason_gets_one():
    parser, updates = feed_all(["::hpcdock::frame-failed 8\n"])
    assert updates == [FrameFailed(8, NO_REASON)]
    assert parser.failed == {8: NO_REASON}


def test_progress_carries_current_frame_and_resets_between_frames():
    parser = LogParser()
    parser.feed("::hpcdock::frame-start 1\nALF_PROGRESS 80%\n")
    assert parser.current_frame == 1 and parser.current_percent == 80.0
    parser.feed("::hpcdock::frame-done 1 /o/1.exr\n")
    assert parser.current_frame is None and parser.current_percent == 0.0
    assert parser.feed("::hpcdock::frame-start 2\nALF_PROGRESS 80%\n") == [FrameStarted(2), Progress(80.0, 2)]


def test_repeated_progress_is_deduplicated_unless_asked():
    log = "ALF_PROGRESS 5%\nALF_PROGRESS 5%\nALF_PROGRESS 5.0%\nALF_PROGRESS 6%\nALF_PROGRESS 5%\n"
    _, updates = feed_all([log])
    assert updates == [Progress(5.0), Progress(6.0), Progress(5.0)]
    _, updates = feed_all([log], dedupe_progress=False)
    assert len(updates) == 5


def test_retried_frame_done_after_failed_clears_failure():
    parser, _ = feed_all(["::hpcdock::frame-failed 4 oops\n::hpcdock::frame-done 4 /o/4.exr\n"])
    assert parser.done == {4} and parser.failed == {}


def test_overlong_line_is_capped_but_parsing_continues():
    parser = LogParser()
    blob = b"x" * (MAX_LINE_CHARS * 3)
    for piece in split_every(blob, 10_000):
        assert parser.feed(piece) == []
    assert parser._pending_len <= MAX_LINE_CHARS
    assert parser.feed(b"\nALF_PROGRESS 9%\n") == [Progress(9.0)]


def test_overlong_line_keeps_its_start():
    parser = LogParser()
    assert parser.feed("ALF_PROGRESS 33%" + "y" * (MAX_LINE_CHARS * 2) + "\n") == [Progress(33.0)]


def test_large_log_in_small_chunks():
    # Megabytes of noise with a marker at the end: all of it flows through, none of it is kept.
    noise = (
        "0:01:02 | Mantra: rendering tile 12 of 400, 1.2 GB memory used, nothing to see\n" * 20000
    ).encode()
    tail = b"::hpcdock::frame-start 7\nALF_PROGRESS 63%\r"
    parser = LogParser()
    updates = []
    for piece in split_every(noise + tail, 4093):
        updates.extend(parser.feed(piece))
    assert updates == [FrameStarted(7), Progress(63.0, 7)]
    assert parser.lines == 20002
    assert parser._pending == []


def test_task_progress_pure_function():
    frames = [10, 11, 12, 13]
    assert task_progress(frames, set(), 0.0) == 0.0
    assert task_progress(frames, set(), 50.0) == 12.5
    assert task_progress(frames, {10}, 0.0) == 25.0
    assert task_progress(frames, {10, 11}, 50.0) == 62.5
    assert task_progress(frames, {10, 11, 12, 13}, 30.0) == 100.0
    # frames outside the task do not count, percent is clamped, NaN is treated as 0
    assert task_progress(frames, {99}, 0.0) == 0.0
    assert task_progress(frames, {10}, 250.0) == 50.0
    assert task_progress(frames, {10}, -20.0) == 25.0
    assert task_progress(frames, {10}, float("nan")) == 25.0
    # duplicate frames in the list are one frame
    assert task_progress([5, 5, 6], {5}, 0.0) == 50.0


def test_task_progress_without_frames_is_the_current_percent():
    assert task_progress([], set(), 42.0) == 42.0
    assert task_progress([], set(), 420.0) == 100.0


def test_parser_task_progress_through_a_chunk():
    frames = [1, 2, 3, 4]
    parser = LogParser()
    assert parser.task_progress(frames) == 0.0
    parser.feed("::hpcdock::frame-start 1\nALF_PROGRESS 50%\n")
    assert parser.task_progress(frames) == 12.5
    parser.feed("::hpcdock::frame-done 1 /o/1.exr\n::hpcdock::frame-start 2\n")
    assert parser.task_progress(frames) == 25.0
    parser.feed("::hpcdock::frame-failed 2 crash\n::hpcdock::frame-start 3\nALF_PROGRESS 100%\n")
    assert parser.task_progress(frames) == 75.0
    assert parser.task_progress(frames, count_failed=False) == 50.0
    parser.feed("::hpcdock::frame-done 3\n::hpcdock::frame-done 4\n")
    assert parser.task_progress(frames) == 100.0


def test_the_first_out_of_memory_and_fork_failure_lines_are_remembered():
    parser = LogParser()
    parser.feed("rendering\nALF_PROGRESS 10%\nfork is a word, and memory too\n")
    assert parser.out_of_memory is None and parser.fork_failed is None
    parser.feed("sh: can't fork: Resource temporarily unavailable\nbash: fork: retry: Resource temporarily")
    parser.feed(" unavailable\nsort: out of memory\nMemoryError\n")
    assert parser.fork_failed == "sh: can't fork: Resource temporarily unavailable"
    assert parser.out_of_memory == "sort: out of memory"
    later = LogParser()
    later.feed("terminate called after throwing an instance of 'std::bad_alloc'\nthreads: 64\n")
    later.feed("RuntimeError: can't start new thread")
    later.close()
    assert later.out_of_memory == "terminate called after throwing an instance of 'std::bad_alloc'"
    assert later.fork_failed == "RuntimeError: can't start new thread"


# -- OpenJD stdout messages -------------------------------------------------------------

OPENJD_LOG = (
    "starting\n"
    "openjd_status: loading the scene\n"
    "openjd_progress: 25\n"
    "openjd_progress: 25\n"
    "openjd_progress: 62.5\n"
    "openjd_env: SCENE=/proj/a b=c.hip\n"
    "openjd_unset_env: OLD_VAR\n"
    "openjd_fail: the sky is missing\n"
    "openjd_status: done\n"
)


def test_openjd_messages_become_typed_updates():
    _, updates = feed_all([OPENJD_LOG])
    assert updates == [
        OpenJDStatus("loading the scene"),
        Progress(25.0),
        Progress(62.5),
        OpenJDEnv("SCENE", "/proj/a b=c.hip"),
        OpenJDUnsetEnv("OLD_VAR"),
        OpenJDFail("the sky is missing"),
        OpenJDStatus("done"),
    ]


@pytest.mark.parametrize("size", [1, 3, 7])
def test_openjd_messages_survive_any_chunking(size):
    assert feed_all(split_every(OPENJD_LOG.encode(), size))[1] == feed_all([OPENJD_LOG])[1]


def test_openjd_progress_is_the_current_frames_progress():
    log = f"{format_marker('frame-start', 4)}\nopenjd_progress: 50\n"
    parser, updates = feed_all([log])
    assert updates == [FrameStarted(4), Progress(50.0, 4)]
    assert parser.task_progress([4, 5]) == 25.0


@pytest.mark.parametrize(
    "line",
    [
        "  openjd_status: indented is not a message",  # the grammar is anchored at the line start
        "openjd_progress: 101",  # outside 0..100: the reference runtime ignores it
        "openjd_progress: lots",
        "openjd_status:no space after the colon",
        "echo openjd_fail: quoted in a command",
        "openjd_unknown: something",
    ],
)
def test_lines_that_are_not_openjd_messages_produce_nothing(line):
    assert feed_all([line + "\n"])[1] == []


@pytest.mark.parametrize(
    "line",
    [
        "openjd_env: 1BAD=x",
        "openjd_env: NO_EQUALS",
        "openjd_unset_env: A B",
        "OPENJD_ENV: X=1",
        "openjd_env X=1",
    ],
)
def test_malformed_env_messages_fail_the_action_like_the_reference_runtime(line):
    updates = feed_all([line + "\n"])[1]
    assert len(updates) == 1 and isinstance(updates[0], OpenJDMalformed), updates
    assert updates[0].reason


def test_quoted_env_value_is_json_decoded_like_the_reference_runtime():
    updates = feed_all(['openjd_env: "GREETING=hello\\nworld"\n'])[1]
    assert updates == [OpenJDEnv("GREETING", "hello\nworld")]
