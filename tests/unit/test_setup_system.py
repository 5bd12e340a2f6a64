"""scripts/setup-system.sh gives each engine user subordinate ids no other user has."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def next_subid(table: str, tmp_path: Path) -> int:
    """Run the script's own ``next_subid`` function (cut out of it) on a sample /etc/subuid."""
    script = (REPO / "scripts" / "setup-system.sh").read_text()
    start = script.index("next_subid() {")
    function = script[start : script.index("\n}\n", start) + 3]
    sample = tmp_path / "subuid"
    sample.write_text(table)
    proc = subprocess.run(
        ["bash", "-c", function + f'next_subid "{sample}"'], capture_output=True, text=True, check=True
    )
    return int(proc.stdout)


def test_a_new_user_starts_after_every_existing_range(tmp_path: Path) -> None:
    assert next_subid("", tmp_path) == 100000
    assert next_subid("hpcdock:100000:65536\n", tmp_path) == 165536
    table = "alice:100000:65536\nbob:231072:65536\n1003:165536:65536\n"
    assert next_subid(table, tmp_path) == 296608
    assert next_subid("# comment\nroot:10:5\n", tmp_path) == 100000


def test_ranges_given_in_a_row_never_overlap(tmp_path: Path) -> None:
    table, ranges = "", []
    for user in ("a", "b", "c"):
        start = next_subid(table, tmp_path)
        ranges.append(range(start, start + 65536))
        table += f"{user}:{start}:65536\n"
    for i, r in enumerate(ranges):
        for other in ranges[i + 1 :]:
            assert r.stop <= other.start or other.stop <= r.start
