"""The example bundle (examples/bouncing-ball) rendered by POV-Ray through the service.

A few frames only, on the real rootless engine with the real renderer image: the frames
must be real PNG images of the size the scene renders at, different from one another,
and the service must serve a thumbnail of each.
"""

from __future__ import annotations

import io
import itertools
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import REPO, ServiceProcess, dump, wait_job

pytestmark = pytest.mark.engine

EXAMPLE = REPO / "examples" / "bouncing-ball"
SIZE = (640, 360)  # render.sh's WIDTH x HEIGHT defaults; the example's hpcdock.yaml keeps them
FRAMES = "1-2,30"  # two chunks: frames 1-2 (one container) and frame 30 (another)


@pytest.fixture(scope="session")
def povray_image(engine_url: str) -> str:
    """Build (or reuse: instant when the recipe is unchanged) the POV-Ray image."""
    proc = subprocess.run(
        [str(REPO / "images" / "povray" / "build.sh")], capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, f"images/povray/build.sh failed:\n{proc.stderr[-3000:]}"
    return proc.stdout.strip().splitlines()[-1]


@pytest.fixture
def example(tmp_path: Path) -> Path:
    """A copy of the example bundle, so the test writes nothing into the repository."""
    dest = tmp_path / "bouncing-ball"
    shutil.copytree(EXAMPLE, dest, ignore=shutil.ignore_patterns("out", "preview.*"))
    return dest


def test_example_frames_are_distinct_images_of_the_scene_size_with_thumbnails(
    service: ServiceProcess, povray_image: str, example: Path
) -> None:
    from PIL import Image, ImageChops

    client = service.client()
    job = client.submit(str(example), {"Frames": FRAMES})
    assert job["tasks_total"] == 2 and job["frames_total"] == 3, dump(job)
    job = wait_job(client, job["id"], timeout=240)
    tasks = client.tasks(job["id"])
    if job["state"] != "succeeded":
        logs = "\n".join(
            f"--- task {t['id']} ({t['state']}): {t['error']}\n{client.log(t['id'])[0][-2000:]}"
            for t in tasks
        )
        pytest.fail(f"job {job['state']}: {job['error']}\n{logs}")
    assert sorted(f for t in tasks for f in t["frames"]) == [1, 2, 30]

    frames = client.frames(job["id"])
    assert [(f["frame"], f["state"]) for f in frames] == [(1, "done"), (2, "done"), (30, "done")], dump(
        frames
    )
    # A clean render raises no frame check (black, constant, size, channels, ...).
    assert [f["flags"] for f in frames] == [[], [], []] and job["frames_flagged"] == 0, dump(frames)
    images = {}
    for f in frames:
        path = Path(f["output"])
        assert path == example / "out" / f"ball.{f['frame']:04d}.png"
        with Image.open(path) as im:
            assert im.format == "PNG"
            assert im.size == SIZE, f"frame {f['frame']}: {im.size}"
            rgb = im.convert("RGB")
        # A rendered scene, not a blank or flat image: many distinct colours.
        colours = rgb.getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 1000, f"frame {f['frame']}: only {len(colours)} colours"
        images[f["frame"]] = rgb
    for a, b in itertools.combinations(sorted(images), 2):
        diff = ImageChops.difference(images[a], images[b])
        assert diff.getbbox() is not None, f"frames {a} and {b} are identical"
        changed = sum(diff.convert("L").histogram()[9:])  # pixels that changed by more than 8 levels
        assert changed > 0.005 * SIZE[0] * SIZE[1], f"frames {a} and {b} barely differ ({changed} pixels)"

    for f in frames:
        data = client.thumbnail(job["id"], f["frame"])
        with Image.open(io.BytesIO(data)) as thumb:
            assert thumb.format == "PNG"
            assert max(thumb.size) <= 256 and min(thumb.size) > 0, thumb.size
            assert abs(thumb.size[0] / thumb.size[1] - SIZE[0] / SIZE[1]) < 0.05, thumb.size

    log, _ = client.log(tasks[0]["id"])
    assert "render.sh: frame 1 rendered" in log, log[-2000:]
    # Nothing but the frames (and no scratch directories) is left in out/.
    assert sorted(p.name for p in (example / "out").iterdir()) == [
        "ball.0001.png",
        "ball.0002.png",
        "ball.0030.png",
    ]
