"""client.py run in-process, the way the CLI tests drive it."""

from click.testing import CliRunner, Result

from object_detection.cli import cli


def run(*args: object) -> Result:
    """client.py in-process (click's CliRunner), arguments given as str() of each: whatever
    goes wrong, whatever a server sends, it ends in a message and an exit code, never a
    traceback or a crash."""
    result = CliRunner().invoke(cli, [str(arg) for arg in args])
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result
