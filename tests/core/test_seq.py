"""Why `core.seq.SeqSink` exists: each README requirement on shipping logs to Seq, run against
`seqlog` (the library the design names, kept as a dev dependency for these tests only) and
against our sink, with a fake Seq on 127.0.0.1.

- "Logging never waits for Seq": seqlog posts on its consumer thread while holding the
  handler's lock, without a timeout, so while Seq stalls every caller waits at its next line,
  even behind loguru's `enqueue=True`; and a process that logged never exits.
- "Lines beyond the queue (10,000) are dropped and counted": seqlog's queue has no bound and
  it drops nothing: the caller waits instead; a batch Seq refuses is lost and counted nowhere.
- "The console says when Seq stops taking logs and, once it is back, how many were dropped":
  seqlog prints a logging error per failed batch, and nothing when Seq is back.
- "Every line carries the properties that apply": fed from loguru (its standard sink), seqlog
  sends none of the bound properties, and an empty traceback.

If one of the `test_seqlog_*` tests fails, seqlog has changed: see whether it now does the job.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import cast

import pytest
from loguru import logger
from seqlog.feature_flags import FeatureFlag, configure_feature, is_feature_enabled
from seqlog.structured_logging import SeqLogHandler

from core.seq import SeqSink

# --- Fake Seqs on 127.0.0.1 -------------------------------------------------------------------


class StalledSeq:
    """A Seq that accepts connections and never answers (they wait in the listen backlog)."""

    def __init__(self) -> None:
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(100)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def release(self) -> None:
        """Close the listener: the connections waiting are reset, so blocked posts fail now."""
        self._listener.close()


@pytest.fixture
def stalled_seq() -> Iterator[StalledSeq]:
    seq = StalledSeq()
    yield seq
    seq.release()


class FakeSeq(ThreadingHTTPServer):
    """`/ingest/clef`: answers `status` (201 takes the events, anything else refuses them)."""

    daemon_threads = True

    def __init__(self) -> None:
        self.status = 201
        self.posts = 0
        self.events: list[dict] = []
        super().__init__(("127.0.0.1", 0), _Ingest)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def messages(self) -> list[str]:
        return [event.get("@m") or event.get("@mt") or "" for event in self.events]


class _Ingest(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        seq = cast(FakeSeq, self.server)
        body = self.rfile.read(int(self.headers["Content-Length"] or 0)).decode()
        seq.posts += 1
        if seq.status == 201:
            seq.events += [json.loads(line) for line in body.splitlines() if line.strip()]
        self.send_response(seq.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def fake_seq() -> Iterator[FakeSeq]:
    server = FakeSeq()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def clef() -> Iterator[None]:
    """seqlog posts CLEF to `/ingest/clef` only with its process-wide feature flag set; and
    loguru as it comes, without our patcher (another test, or an in-process command, may have
    configured it: the patcher takes the traceback off the record)."""
    before = is_feature_enabled(FeatureFlag.USE_CLEF)
    configure_feature(FeatureFlag.USE_CLEF, True)
    logger.configure(patcher=lambda _record: None)
    yield
    configure_feature(FeatureFlag.USE_CLEF, before)


def log_in_thread(count: int = 1) -> threading.Thread:
    thread = threading.Thread(target=lambda: [logger.info("line {}", n) for n in range(count)])
    thread.start()
    return thread


# --- Logging never waits for Seq ----------------------------------------------------------------


@pytest.mark.parametrize("enqueue", [False, True], ids=["handler", "loguru-enqueue"])
def test_seqlog_makes_the_caller_wait_while_seq_stalls(
    stalled_seq: StalledSeq, clef: None, enqueue: bool
) -> None:
    handler = SeqLogHandler(stalled_seq.url, batch_size=10, auto_flush_timeout=0.1)
    handler_id = logger.add(handler, format="{message}", enqueue=enqueue)
    logger.info("first line: its post waits for Seq, holding the handler's lock")
    time.sleep(0.5)
    # With `enqueue`, loguru's queue is a pipe: it fills up, then the caller waits.
    caller = log_in_thread(1 if not enqueue else 1000)
    caller.join(3.0)
    waited = caller.is_alive()
    stalled_seq.release()
    caller.join(30)
    logger.remove(handler_id)
    assert waited, "seqlog did not make the caller wait"


def test_our_sink_never_makes_the_caller_wait_while_seq_stalls(stalled_seq: StalledSeq) -> None:
    sink = SeqSink(stalled_seq.url, max_queue=10_000, timeout=1.0, attempts=1)
    handler_id = logger.add(sink, format="{message}")
    try:
        started = time.perf_counter()
        for n in range(20_000):
            logger.info("line {}", n)
        assert time.perf_counter() - started < 5.0
        # Bounded: the queue holds 10,000 (one batch may be in the post); the rest is counted.
        assert sink.dropped >= 20_000 - 10_000 - sink.batch_size
    finally:
        logger.remove(handler_id)
        stalled_seq.release()
        sink.close()


def test_seqlog_never_lets_a_process_exit_while_seq_stalls(stalled_seq: StalledSeq) -> None:
    program = (
        "import logging, time, seqlog\n"
        f"seqlog.log_to_seq({stalled_seq.url!r}, level=logging.INFO, batch_size=10, use_clef=True)\n"
        "logging.getLogger('probe').info('one line')\n"
        "time.sleep(0.5)\n"  # its consumer thread has taken the line: exit posts it, and waits
    )
    with pytest.raises(subprocess.TimeoutExpired):
        subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=10)


def test_seqlog_loses_the_last_lines_of_a_process_that_exits(fake_seq: FakeSeq) -> None:
    program = (
        "import logging, seqlog\n"
        f"seqlog.log_to_seq({fake_seq.url!r}, level=logging.INFO, batch_size=10, use_clef=True)\n"
        "logging.getLogger('probe').info('one line, then exit')\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=30)
    assert done.returncode == 0, done.stderr
    time.sleep(0.5)
    assert fake_seq.events == []  # still on its queue at exit: gone


def test_our_sink_lets_a_process_exit_while_seq_stalls_and_sends_its_last_lines(
    stalled_seq: StalledSeq, fake_seq: FakeSeq
) -> None:
    for url, sent in ((stalled_seq.url, 0), (fake_seq.url, 1)):
        program = (
            "from loguru import logger\n"
            "from core.seq import SeqSink\n"
            f"logger.add(SeqSink({url!r}, timeout=1.0), format='{{message}}')\n"
            "logger.info('one line, then exit')\n"
        )
        started = time.monotonic()
        done = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=30)
        assert done.returncode == 0, done.stderr
        assert time.monotonic() - started < 15
        assert len(fake_seq.events) == sent


# --- Dropped lines are counted; the console says when Seq stops and comes back -------------------


def test_seqlog_loses_what_seq_refused_without_counting_or_saying_when_seq_is_back(
    fake_seq: FakeSeq, clef: None, capsys: pytest.CaptureFixture[str]
) -> None:
    handler = SeqLogHandler(fake_seq.url, batch_size=5, auto_flush_timeout=0.2)
    handler_id = logger.add(handler, format="{message}")
    try:
        fake_seq.status = 503
        for n in range(10):
            logger.info("while down {}", n)
        wait_for(lambda: fake_seq.posts >= 2)
        fake_seq.status = 201
        logger.info("back")
        wait_for(lambda: fake_seq.events)
        time.sleep(0.5)
    finally:
        logger.remove(handler_id)
    assert fake_seq.messages() == ["back"]  # the 10 lines are gone, never sent again
    assert not hasattr(handler, "dropped")
    console = capsys.readouterr().err
    assert console.count("--- Logging error ---") == 2  # once per refused batch
    assert "dropped" not in console  # no count, and nothing said when Seq came back


def test_our_sink_counts_what_seq_refused_and_says_when_seq_is_back(
    fake_seq: FakeSeq, capsys: pytest.CaptureFixture[str]
) -> None:
    console = logger.add(sys.stderr, format="{message}")
    sink = SeqSink(fake_seq.url, batch_size=5, flush_seconds=0.2, attempts=1)
    handler_id = logger.add(sink, format="{message}")
    try:
        fake_seq.status = 503
        for n in range(10):
            logger.info("while down {}", n)
        assert sink.flush()
        fake_seq.status = 201
        logger.info("back")
        assert sink.flush()
    finally:
        logger.remove(handler_id)
        logger.remove(console)
        sink.close()
    assert sink.dropped == 11  # the ten lines and the warning that Seq is not taking logs
    lines = capsys.readouterr().err.splitlines()
    assert sum("is not taking logs" in line for line in lines) == 1
    (again,) = [line for line in lines if "takes logs again" in line]
    assert again.endswith("; 11 log line(s) dropped so far")
    assert "back" in fake_seq.messages()


def wait_for(condition: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


# --- Structured properties -----------------------------------------------------------------------


def test_seqlog_fed_from_loguru_loses_the_bound_properties_and_the_traceback(
    fake_seq: FakeSeq, clef: None
) -> None:
    handler = SeqLogHandler(fake_seq.url, batch_size=10, auto_flush_timeout=0.1)
    handler_id = logger.add(handler, format="{message}")
    try:
        try:
            raise RuntimeError("rejected")
        except RuntimeError:
            logger.bind(EventKey="employee_create:7:x", EmployeeId=7).exception("failed")
        wait_for(lambda: fake_seq.events)
    finally:
        logger.remove(handler_id)
    (event,) = fake_seq.events
    assert "EventKey" not in event
    assert "EmployeeId" not in event
    assert event["@x"].strip() == ""  # loguru's standard sink marks the traceback as rendered


def test_our_sink_sends_the_bound_properties(fake_seq: FakeSeq) -> None:
    sink = SeqSink(fake_seq.url, flush_seconds=0.1)
    handler_id = logger.add(sink, format="{message}")
    try:
        logger.bind(EventKey="employee_create:7:x", EmployeeId=7).warning("line")
        assert sink.flush()
    finally:
        logger.remove(handler_id)
        sink.close()
    (event,) = fake_seq.events
    assert (event["EventKey"], event["EmployeeId"], event["@l"]) == (
        "employee_create:7:x",
        7,
        "Warning",
    )
