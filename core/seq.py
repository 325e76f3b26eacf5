"""A loguru sink that ships log lines to Seq as CLEF events, without ever holding up the caller.

Each line becomes one CLEF event (`@t`, `@m`, `@l`, and every bound property, `@x` included: the
traceback `core.logging` rendered and masked) and goes on a bounded queue; a background thread
posts batches to `{SEQ_URL}/ingest/clef` (header `X-Seq-ApiKey` when a key is set). Logging never
waits for Seq: when the queue is full (Seq is down or slow) the line is dropped and counted, and a
batch Seq refuses after a few attempts is dropped and counted too. Going down and coming back are
each reported once, with the count.

Why not `seqlog`, the library the design names: `tests/core/test_seq.py` runs each requirement
against it. It posts while holding its handler's lock and without a timeout, so a stalled Seq
makes every caller wait (behind loguru's `enqueue=True` too) and keeps a process from exiting;
its queue has no bound, it drops and counts nothing, it prints an error per failed batch and
nothing when Seq is back, and it loses what is still queued when a process exits.
"""

from __future__ import annotations

import atexit
import json
import os
import queue
import socket
import threading
import time
from typing import Any

import httpx
from loguru import logger

from core.settings import mask_url

# Loguru's levels as Seq names them.
SEQ_LEVELS = {
    "TRACE": "Verbose",
    "DEBUG": "Debug",
    "INFO": "Information",
    "SUCCESS": "Information",
    "WARNING": "Warning",
    "ERROR": "Error",
    "CRITICAL": "Fatal",
}
CLEF_CONTENT_TYPE = "application/vnd.serilog.clef"
MACHINE_NAME = socket.gethostname()
MAX_BACKOFF_SECONDS = 30.0


class SeqSink:
    """`logger.add(SeqSink(url, api_key), format="{message}")`; `dropped` counts lost lines.

    - `max_queue`: lines waiting to be sent; beyond it new lines are dropped (counted).
    - `batch_size`, `flush_seconds`: a batch goes when full or when its oldest line waited this long.
    - `attempts`: posts of one batch before it is dropped (counted), with backoff in between.

    Masking is not done here: `core.logging`'s patcher masked the record before any sink sees it.
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        max_queue: int = 10_000,
        batch_size: int = 200,
        flush_seconds: float = 1.0,
        timeout: float = 5.0,
        attempts: int = 3,
    ) -> None:
        self.endpoint = url.rstrip("/") + "/ingest/clef"
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.attempts = attempts
        self.dropped = 0
        self.sent = 0
        self._pending = 0  # queued or being posted
        self._queue: queue.Queue[str] = queue.Queue(maxsize=max_queue)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._down_since: float | None = None
        self._dropped_reported = 0
        headers = {"Content-Type": CLEF_CONTENT_TYPE}
        if api_key:
            headers["X-Seq-ApiKey"] = api_key
        # trust_env=False: Seq is usually on the local network; no proxy from the environment.
        self._http = httpx.Client(headers=headers, timeout=timeout, trust_env=False)
        self._thread = threading.Thread(target=self._run, name="seq-sink", daemon=True)
        self._thread.start()
        atexit.register(self.close)

    # The loguru side: called on the logging thread, never blocks.

    def __call__(self, message: Any) -> None:
        try:
            event = self.event(message.record)
        except Exception:  # a line that cannot be encoded is dropped, not raised at the caller
            self._count_dropped(1)
            return
        with self._lock:
            try:
                self._queue.put_nowait(event)
            except queue.Full:
                self.dropped += 1
                return
            self._pending += 1

    def event(self, record: dict[str, Any]) -> str:
        """The CLEF JSON of one loguru record."""
        clef: dict[str, Any] = {
            "@t": record["time"].isoformat(),
            "@m": record["message"],
            "@l": SEQ_LEVELS.get(record["level"].name, record["level"].name),
            "SourceContext": record["name"],
            "Function": record["function"],
            "Line": record["line"],
            "MachineName": MACHINE_NAME,
            "ProcessId": os.getpid(),
        }
        clef.update(record["extra"])
        return json.dumps(clef, default=str, ensure_ascii=False)

    # The sending thread.

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            batch = self._next_batch()
            if batch:
                self._deliver(batch)

    def _next_batch(self) -> list[str]:
        try:
            first = self._queue.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self.flush_seconds
        while len(batch) < self.batch_size:
            left = deadline - time.monotonic()
            if left <= 0 or self._stop.is_set():
                left = 0
            try:
                batch.append(self._queue.get(timeout=left) if left else self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _deliver(self, batch: list[str]) -> None:
        body = "\n".join(batch).encode()
        backoff = 0.5
        try:
            for attempt in range(1, self.attempts + 1):
                error = self._post(body)
                if error is None:
                    self.sent += len(batch)
                    self._came_back()
                    return
                self._went_down(error)
                # Stopping: no more waiting for a Seq that does not answer.
                if attempt == self.attempts or self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            self._count_dropped(len(batch))
        finally:
            with self._lock:
                self._pending -= len(batch)

    def _post(self, body: bytes) -> str | None:
        """None when Seq took the batch, else why not."""
        try:
            response = self._http.post(self.endpoint, content=body)
        except httpx.HTTPError as error:
            return f"{type(error).__name__}: {error}"
        if response.status_code >= 300:
            return f"HTTP {response.status_code}: {response.text[:200]}"
        return None

    def _count_dropped(self, count: int) -> None:
        with self._lock:
            self.dropped += count

    def _went_down(self, error: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            # Once, when Seq stops taking logs (the line reaches Seq only if it comes back in time).
            logger.warning(
                "Seq at {} is not taking logs ({}); log lines are dropped until it does",
                mask_url(self.endpoint),
                error,
            )

    def _came_back(self) -> None:
        dropped = self.dropped
        if self._down_since is not None or dropped > self._dropped_reported:
            outage = time.monotonic() - self._down_since if self._down_since else 0.0
            self._down_since = None
            self._dropped_reported = dropped
            logger.warning(
                "Seq takes logs again after {:.0f} s; {} log line(s) dropped so far",
                outage,
                dropped,
                SeqDropped=dropped,
            )

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every line logged so far was sent or dropped (or `timeout`); True if so."""
        deadline = time.monotonic() + timeout
        while self._pending and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._pending

    def close(self, timeout: float = 3.0) -> None:
        """Send what is queued (for at most `timeout`), then stop the thread."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout)
        self._http.close()
        atexit.unregister(self.close)
