"""client.py run in-process, the way the CLI tests drive it, and the seed's command line."""

from click.testing import CliRunner, Result

from object_detection.cli import cli
from sidecar_testing.data import IMAGE1


def seed_args(server_url: str, output_json: object, *extra: object) -> list[object]:
    """The seed's command line word for word (on image1.jpg), then `extra`: what must keep
    working whatever else the client learns."""
    return [
        "--server_url", server_url,
        "--image_path", IMAGE1,
        "--output_json", output_json,
        "--save_output_image", "True",
        "--label_map", "data/labels.pbtxt",
        *extra,
    ]  # fmt: skip


def run(*args: object) -> Result:
    """client.py in-process (click's CliRunner), arguments given as str() of each: whatever
    goes wrong, whatever a server sends, it ends in a message and an exit code, never a
    traceback or a crash."""
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result
