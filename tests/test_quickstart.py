"""`make demo` runs scripts/quickstart.py: the local server plus the seed's client command."""

import json
import subprocess
import sys

from sidecar_testing.data import COCO_DOG, ROOT
from sidecar_testing.servers import free_port


def test_quickstart_serves_the_shared_model_and_finds_the_dogs(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run(
        [
            sys.executable,
            "scripts/quickstart.py",
            "--rest_api_port",
            str(free_port()),
            "--output_dir",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # It shows the user the seed's own command line, then where the results are.
    assert "--save_output_image True" in result.stdout
    assert f"detections in {out / 'image1.json'}" in result.stdout
    detections = json.loads((out / "image1.json").read_text())["detections"]
    assert [d["class_id"] for d in detections[:2]] == [COCO_DOG, COCO_DOG]
    assert (out / "image1_annotated.jpg").stat().st_size > 0
