"""Reading a real gateway's `GET /admin/events` in a thread while a test acts on the gateway."""

from __future__ import annotations

import json
import queue
import threading
import time
from typing import Any

import httpx

from appliance.wire.sse import SseReader

SUBSCRIBED = ": subscribed"


class EventTail:
    """The admin event stream read in the background: each event as (kind, its JSON), comments counted."""

    def __init__(self, base_url: str, admin_key: str) -> None:
        self._url = f"{base_url}/admin/events"
        self._headers = {"Authorization": f"Bearer {admin_key}"}
        self.events: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        self.subscribed = threading.Event()
        self.ended = threading.Event()
        self.headers: dict[str, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> EventTail:
        self._thread.start()
        assert self.subscribed.wait(30), "the event stream never opened"
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _read(self) -> None:
        reader = SseReader()
        try:
            with httpx.stream("GET", self._url, headers=self._headers, timeout=60) as response:
                self.headers = dict(response.headers)
                for line in response.iter_lines():
                    if line == SUBSCRIBED:
                        self.subscribed.set()
                    if (event := reader.feed(line)) is not None:
                        self.events.put((event.kind, json.loads(event.data)))
                    if self._stop.is_set():
                        return
        except httpx.HTTPError:
            pass  # the gateway went away: `ended` says so
        finally:
            self.ended.set()

    def wait_for(self, kind: str, within_s: float = 120.0, **fields: Any) -> dict[str, Any]:
        """The next event of `kind` whose fields include `fields` (others are skipped); fails after
        `within_s`."""
        deadline = time.monotonic() + within_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                got, data = self.events.get(timeout=left)
            except queue.Empty:
                break
            if got == kind and all(data.get(k) == v for k, v in fields.items()):
                return data
        raise AssertionError(f"no {kind} event with {fields} within {within_s:g} s")

    def kinds(self) -> list[str]:
        """The kinds of the events waiting, taken from the queue."""
        taken = []
        while not self.events.empty():
            taken.append(self.events.get_nowait()[0])
        return taken
