"""Follow the JSON event stream of a pull or push: progress per layer, and failures made loud.

docker-py's `push()`/`pull()` do not raise when the registry refuses: the refusal is one event
(`{"error": ..., "errorDetail": {"message": ...}}`) in a stream that otherwise looks normal.
`follow()` checks every event, so a refused push can never be reported as a success.

Progress is data, not output: the library hands `Progress` events to a callback (the CLI draws
them), so `ImageBuilder` used from Python without one is silent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from image_builder.errors import BuildError

# The statuses with which the daemon says that a layer is done.
LAYER_DONE = ("Pushed", "Layer already exists", "Pull complete", "Already exists", "Mounted from")


class RegistryError(BuildError):
    """The daemon or the registry reported a failure in the event stream; str() is its message."""


@dataclass(frozen=True)
class Progress:
    """How far one transfer has got: the model copy, or one layer of a pull or push."""

    phase: str  # "copy" (the model into the build container), "pull" or "push"
    done: int  # bytes so far
    total: int | None  # bytes expected; None while the daemon has not said
    layer: str | None = None  # the layer's short id; None for the model copy
    status: str = ""  # the daemon's word for the layer: "Downloading", "Pushed"...
    finished: bool = False


ProgressCallback = Callable[[Progress], None]


def layer_progress(event: dict, phase: str) -> Progress | None:
    """The Progress an event of the daemon's pull/push stream reports, if any.

    The stream also carries lines without a layer ("Pulling from ...") or without bytes
    ("Waiting"): those move no bar.
    """
    layer, status = event.get("id"), event.get("status", "")
    detail = event.get("progressDetail") or {}
    finished = status.startswith(LAYER_DONE)
    if not layer or ("total" not in detail and not finished):
        return None
    return Progress(phase, detail.get("current", 0), detail.get("total"), layer, status, finished)


def follow(events: Iterable[dict], phase: str, on_progress: ProgressCallback | None = None) -> dict:
    """Consume `events`, reporting each layer's progress; return the last `aux` payload ({}
    when none).

    Raises RegistryError with the registry's own message on the first error event.
    """
    aux: dict = {}
    for event in events:
        if "error" in event or "errorDetail" in event:
            detail = event.get("errorDetail") or {}
            raise RegistryError(detail.get("message") or event.get("error") or str(event))
        if "aux" in event:
            aux = event["aux"]
        progress = layer_progress(event, phase)
        if progress and on_progress:
            on_progress(progress)
    return aux
