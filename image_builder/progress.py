"""Follow the JSON event stream of a pull or push: progress per layer, and failures made loud.

docker-py's `push()`/`pull()` do not raise when the registry refuses: the refusal is one event
(`{"error": ..., "errorDetail": {"message": ...}}`) in a stream that otherwise looks normal.
`follow()` checks every event, so a refused push can never be reported as a success.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm


class RegistryError(Exception):
    """The daemon or the registry reported a failure in the event stream; str() is its message."""


class LayerProgress:
    """One tqdm bar per layer on a terminal; one line per finished layer otherwise (CI logs)."""

    DONE = ("Pushed", "Layer already exists", "Pull complete", "Already exists", "Mounted from")

    def __init__(self, action: str) -> None:
        self.action = action
        self.interactive = sys.stderr.isatty()
        self.bars: dict[str, tqdm] = {}

    def update(self, event: dict) -> None:
        layer, status = event.get("id"), event.get("status", "")
        detail = event.get("progressDetail") or {}
        if not layer or ("total" not in detail and not status.startswith(self.DONE)):
            return
        if self.interactive:
            bar = self.bars.get(layer)
            if bar is None:
                bar = self.bars[layer] = tqdm(
                    desc=f"{self.action} {layer}", unit="B", unit_scale=True, leave=True
                )
            if "total" in detail:
                bar.n = detail.get("current", 0)
                bar.total = max(detail["total"], bar.n)  # pushes may count past the estimate
            bar.set_postfix_str(status, refresh=True)
        elif status.startswith(self.DONE):
            print(f"{self.action} {layer}: {status}", file=sys.stderr, flush=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def follow(events: Iterable[dict], action: str) -> dict:
    """Consume `events`, showing progress; return the last `aux` payload ({} when none).

    Raises RegistryError with the registry's own message on the first error event.
    """
    progress = LayerProgress(action)
    aux: dict = {}
    try:
        for event in events:
            if "error" in event or "errorDetail" in event:
                detail = event.get("errorDetail") or {}
                raise RegistryError(detail.get("message") or event.get("error") or str(event))
            if "aux" in event:
                aux = event["aux"]
            progress.update(event)
    finally:
        progress.close()
    return aux
