"""The task log on disk: capped per attempt with the end kept, read by offsets that never move."""

from __future__ import annotations

import re
from pathlib import Path

from hpcdock_service import tasklog

CAP = 64 * 1024
MARKER_RE = re.compile(rb"--- hpcdock: +(\d+) bytes of this attempt's output dropped here .*---\n")


def lines(first: int, count: int) -> bytes:
    """Numbered lines of 16 bytes each: the number says where a line stood in the output."""
    return b"".join(b"line %010d\n" % n for n in range(first, first + count))


def numbers(data: bytes) -> list[int]:
    return [int(m) for m in re.findall(rb"^line (\d{10})$", data, re.MULTILINE)]


def read_all(path: Path, offset: int = 0, limit: int = 10_000) -> tuple[bytes, int]:
    out = b""
    while True:
        data, offset, _ = tasklog.read(path, offset, limit)
        if not data:
            return out, offset
        out += data


def test_an_attempt_over_the_cap_keeps_its_end_and_says_how_much_went(tmp_path: Path) -> None:
    path = tmp_path / "task-1.log"
    tasklog.append_line(path, "--- attempt 1: render")
    header = path.stat().st_size
    with tasklog.AttemptLog(path, CAP) as out:
        for n in range(0, 100_000, 500):  # 1.6 MB in chunks of 8 KB
            out.write(lines(n, 500))
        assert out.dropped > 0
    data = path.read_bytes()
    assert len(data) - header <= CAP
    assert data.startswith(b"--- attempt 1: render\n")
    marker = MARKER_RE.search(data)
    assert marker is not None and marker.start() == header
    kept = numbers(data[marker.end() :])
    assert kept[-1] == 99_999 and kept == list(range(kept[0], 100_000))  # the end, whole and in order
    assert len(kept) * 16 >= CAP // 2 - len(marker.group(0))
    # The marker counts the dropped bytes: what is printed = header + dropped + kept.
    assert int(marker.group(1)) == 100_000 * 16 - len(data[marker.end() :])


def test_offsets_count_printed_bytes_across_cuts(tmp_path: Path) -> None:
    path = tmp_path / "task-1.log"
    printed = lines(0, 20_000)
    with tasklog.AttemptLog(path, CAP) as out:
        out.write(printed)
    _, _, size = tasklog.read(path, 0, 1)
    assert size == len(printed)
    # Any offset in the kept end reads exactly what was printed there.
    kept_from = len(printed) - 1000 * 16
    data, following, _ = tasklog.read(path, kept_from, 160)
    assert data == printed[kept_from : kept_from + 160] and following == kept_from + 160
    # A reader inside the dropped bytes resumes right after them, with the next offset saying so.
    data, following, _ = tasklog.read(path, 1000 * 16, 10_000_000)
    assert numbers(data)[0] > 1000 and numbers(data)[-1] == 19_999 and following == len(printed)
    # From the start: the marker, then the kept end, offsets ending at the printed size.
    everything, end = read_all(path)
    assert MARKER_RE.match(everything) and end == len(printed)


def test_a_follower_gets_every_line_in_order_or_a_marked_gap(tmp_path: Path) -> None:
    path = tmp_path / "task-1.log"
    seen, offset = b"", 0
    with tasklog.AttemptLog(path, CAP) as out:
        for n in range(0, 40_000, 250):
            out.write(lines(n, 250))
            if n % 2000 == 0:  # a follower that keeps up now and then, as `hpcdock logs -f` does
                data, offset = read_all(path, offset)
                seen += data
    data, offset = read_all(path, offset)
    seen += data
    got = numbers(seen)
    assert got[-1] == 39_999 and got == sorted(set(got))  # no line twice, none out of order
    assert offset == 40_000 * 16


def test_a_later_attempt_reads_on_after_a_capped_one_and_truncation_drops_only_its_own(
    tmp_path: Path,
) -> None:
    path = tmp_path / "task-1.log"
    with tasklog.AttemptLog(path, CAP) as out:
        out.write(lines(0, 20_000))
    second_at = path.stat().st_size
    tasklog.append_line(path, "--- attempt 2: render")
    with tasklog.AttemptLog(path, CAP) as out:
        out.write(lines(50_000, 20_000))
    everything, _ = read_all(path)
    assert len(MARKER_RE.findall(everything)) == 2
    assert numbers(everything)[-1] == 69_999 and b"--- attempt 2" in everything
    tasklog.truncate(path, second_at)  # attempt 2 is run again (a service restart re-adopts it)
    everything, end = read_all(path)
    assert path.stat().st_size == second_at and len(MARKER_RE.findall(everything)) == 1
    assert numbers(everything)[-1] == 19_999 and end == 20_000 * 16


def test_a_log_under_the_cap_is_written_as_printed(tmp_path: Path) -> None:
    path = tmp_path / "task-1.log"
    with tasklog.AttemptLog(path, CAP) as out:
        out.write(b"hello\n")
        out.write(b"world\n")
    assert path.read_bytes() == b"hello\nworld\n"
    assert not (tmp_path / "task-1.log.cuts").exists()
    assert tasklog.read(path, 6, 100) == (b"world\n", 12, 12)
    assert tasklog.read(tmp_path / "none.log", 0, 100) == (b"", 0, 0)
