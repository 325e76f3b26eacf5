"""The gateway's bounds, over real sockets against the gateway as `webhook_gateway.server` runs it
(uvicorn with the bounded protocol, the app with its body deadline and refusal limit), on a free
port: slow heads and slow bodies are cut off, idle connections closed, connections capped, a
client refused too often answered 429, and refusals logged counted."""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Generator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from core.names import WEBHOOK_PATH
from core.peopleforce.signature import SIGNATURE_HEADER, sign
from core.settings import Settings
from sandbox.server import free_port
from tests.paths import PEOPLEFORCE_FIXTURES
from webhook_gateway import create_app
from webhook_gateway.bounds import CountedMessages, Rejections
from webhook_gateway.server import server_config

SECRET = "bounds-test-secret"
BODY = (PEOPLEFORCE_FIXTURES / "webhook_employee_create.json").read_bytes()


class Gateway:
    def __init__(self, port: int, app: Any) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.app = app

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        return socket.create_connection(
            ("127.0.0.1", self.port), timeout=10, source_address=(source, 0)
        )

    def client(self, source: str = "127.0.0.1") -> httpx.Client:
        transport = httpx.HTTPTransport(local_address=source)
        return httpx.Client(base_url=self.url, transport=transport, trust_env=False, timeout=10)


@contextmanager
def gateway(tmp_path: Path, **bounds: Any) -> Generator[Gateway]:
    """The gateway app under uvicorn as `webhook_gateway.server` configures it, with `bounds`
    as settings (no dispatcher: nothing here needs Prefect)."""
    settings = Settings(_env_file=None, webhook_secret=SecretStr(SECRET), **bounds)  # type: ignore[call-arg]
    app = create_app(settings, store_url=f"sqlite+aiosqlite:///{tmp_path / 'inbox.db'}")
    port = free_port()
    config = server_config(app, settings, port=port)
    config.timeout_graceful_shutdown = 2
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"gateway:{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        assert thread.is_alive(), "the gateway did not start"
        assert time.monotonic() < deadline, "the gateway did not start in time"
        time.sleep(0.01)
    try:
        yield Gateway(port, app)
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and how long that took."""
    started = time.monotonic()
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    return received, time.monotonic() - started


def signed_head(body_length: int) -> bytes:
    return (
        f"POST {WEBHOOK_PATH} HTTP/1.1\r\nHost: gateway\r\ncontent-type: application/json\r\n"
        f"content-length: {body_length}\r\n{SIGNATURE_HEADER}: {sign(SECRET, BODY)}\r\n\r\n"
    ).encode()


# Read timeouts


def test_a_slow_head_is_cut_off_with_408_however_it_trickles(tmp_path: Path) -> None:
    with gateway(tmp_path, gateway_header_timeout_seconds=0.5) as running:
        trickling = running.connect()
        started = time.monotonic()
        # One byte every 0.1 s: each arrives in time, the head as a whole does not.
        trickling.settimeout(0.1)
        answer = b""
        for byte in signed_head(len(BODY)):
            try:
                trickling.sendall(bytes([byte]))
                answer = trickling.recv(65536)  # waits 0.1 s: the pace of the trickle
            except TimeoutError:
                assert time.monotonic() - started < 5, "never cut off"
                continue
            except OSError:  # the gateway has closed the connection
                pass
            break
        rest, _ = read_until_closed(trickling, 5)
        elapsed = time.monotonic() - started
        answer += rest
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"request head not received within 0.5 s" in answer
        assert 0.4 < elapsed < 3, elapsed

        # A connection that sends nothing at all is closed as well.
        silent = running.connect()
        answer, elapsed = read_until_closed(silent, 5)
        assert answer.startswith(b"HTTP/1.1 408 ")
        assert 0.4 < elapsed < 3, elapsed

        # A prompt request is not affected.
        with running.client() as client:
            assert client.get("/healthz").status_code == 200


def test_a_slow_body_is_cut_off_with_408_and_nothing_is_stored(tmp_path: Path) -> None:
    with gateway(
        tmp_path, gateway_header_timeout_seconds=5, gateway_body_timeout_seconds=0.5
    ) as running:
        slow = running.connect()
        started = time.monotonic()
        slow.sendall(signed_head(len(BODY)) + BODY[:10])
        answer, _ = read_until_closed(slow, 5)
        elapsed = time.monotonic() - started
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"request body not received within 0.5 s" in answer
        assert 0.4 < elapsed < 3, elapsed

        with running.client() as client:
            whole = client.post(
                WEBHOOK_PATH, content=BODY, headers={SIGNATURE_HEADER: sign(SECRET, BODY)}
            )
        assert whole.status_code == 202, whole.text  # the first was never stored
        assert whole.json()["ref"] == "e1"


def test_an_idle_kept_alive_connection_is_closed(tmp_path: Path) -> None:
    with gateway(tmp_path, gateway_keep_alive_seconds=1) as running:
        sock = running.connect()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: gateway\r\n\r\n")
        # Answered at once, then the connection stays open, idle, for the keep-alive timeout.
        answer, elapsed = read_until_closed(sock, 5)
        assert answer.startswith(b"HTTP/1.1 200 "), answer
        assert answer.endswith(b'{"status":"alive"}')
        assert 0.8 < elapsed < 3, elapsed


# Connections


def test_past_the_connection_cap_a_request_is_answered_503(tmp_path: Path) -> None:
    with (
        gateway(tmp_path, gateway_max_connections=3, gateway_header_timeout_seconds=30) as running,
        ExitStack() as held,
    ):
        for _ in range(3):  # three clients holding a connection each, a head half sent
            sock = held.enter_context(running.connect())
            sock.sendall(b"POST /webhooks/peopleforce HTTP/1.1\r\n")
        time.sleep(0.2)
        with running.client() as client:
            refused = client.get("/healthz")
        assert refused.status_code == 503
        held.close()
        time.sleep(0.3)
        with running.client() as client:
            assert client.get("/healthz").status_code == 200


# Refusals


def test_a_client_refused_too_often_gets_429_before_its_request_is_read(tmp_path: Path) -> None:
    with gateway(tmp_path, gateway_reject_limit=3, gateway_reject_window_seconds=2) as running:
        with running.client() as client:
            for _ in range(3):
                assert client.post(WEBHOOK_PATH, content=BODY).status_code == 401
            limited = client.post(
                WEBHOOK_PATH, content=BODY, headers={SIGNATURE_HEADER: sign(SECRET, BODY)}
            )
            assert limited.status_code == 429, limited.text
            assert 1 <= int(limited.headers["retry-after"]) <= 2
            assert limited.headers["connection"] == "close"

        # Its request is not read: the answer comes though the body never does.
        sock = running.connect()
        sock.sendall(signed_head(500_000))
        answer, elapsed = read_until_closed(sock, 5)
        assert answer.startswith(b"HTTP/1.1 429 "), answer
        assert elapsed < 1

        # Another client is heard meanwhile (loopback answers on all of 127/8).
        with running.client("127.0.0.2") as other:
            stored = other.post(
                WEBHOOK_PATH, content=BODY, headers={SIGNATURE_HEADER: sign(SECRET, BODY)}
            )
            assert stored.status_code == 202, stored.text

        # Once the window has passed, the first client is heard again.
        time.sleep(2.1)
        with running.client() as client:
            again = client.post(
                WEBHOOK_PATH, content=BODY, headers={SIGNATURE_HEADER: sign(SECRET, BODY)}
            )
            assert again.status_code == 200, again.text  # a repeat of the stored delivery


def test_refusals_are_logged_one_line_per_n_with_the_counts(
    tmp_path: Path, log_lines: list[str]
) -> None:
    with (
        gateway(tmp_path, gateway_reject_limit=0, gateway_reject_log_every=10) as running,
        running.client() as client,
    ):
        for _ in range(20):
            assert client.post(WEBHOOK_PATH, content=BODY).status_code == 401
        too_large = running.connect()  # refused from its Content-Length, the body never sent
        too_large.sendall(signed_head(2_000_000))
        answer, _ = read_until_closed(too_large, 5)
        assert answer.startswith(b"HTTP/1.1 413 "), answer

    refusals = [line for line in log_lines if "webhook requests refused" in line]
    assert len(refusals) == 3, refusals  # the first, then one per 10
    assert refusals[0].startswith("WARNING webhook requests refused: 1 since")
    assert "(401 x 10)" in refusals[1]
    assert "(401 x 9, 413 x 1)" in refusals[2]
    assert "the latest from 127.0.0.1: 413 body of" in refusals[2]


def test_the_limit_slides_with_the_window_and_the_table_of_clients_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    rejections = Rejections(3, 10.0, 1_000_000, clock=lambda: now[0])
    for _ in range(3):
        rejections.refused("a", 401, "missing signature")
        now[0] += 1
    assert rejections.retry_after("a") == pytest.approx(7.0)  # the first refusal leaves at 1010
    assert rejections.retry_after("b") is None
    now[0] = 1010.5
    assert rejections.retry_after("a") is None
    rejections.refused("a", 401, "missing signature")  # two in the window again, plus this one
    assert rejections.retry_after("a") == pytest.approx(0.5)
    rejections.refused("a", 404, "not a refusal")  # counted in the log only
    assert len(rejections._times["a"]) == 3

    monkeypatch.setattr("webhook_gateway.bounds.MAX_CLIENTS", 5)
    for n in range(20):
        rejections.refused(f"10.0.0.{n}", 401, "missing signature")
    assert len(rejections._times) <= 5
    assert "10.0.0.19" in rejections._times  # the latest kept, the oldest forgotten

    off = Rejections(0, 10.0, 1)
    for _ in range(100):
        off.refused("a", 401, "missing signature")
    assert off.retry_after("a") is None


def test_uvicorns_own_per_request_warnings_are_counted() -> None:
    counted = logging.getLogger("tests.uvicorn-counted")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    counted.addHandler(Keep())
    counted.addFilter(CountedMessages(10))
    counted.propagate = False
    for _ in range(25):
        counted.warning("Exceeded concurrency limit.")
    counted.warning("Something else.")

    messages = [record.getMessage() for record in records]
    assert messages == [
        "Exceeded concurrency limit. (1 since the gateway started; logged one line per 10)",
        "Exceeded concurrency limit. (10 since the gateway started; logged one line per 10)",
        "Exceeded concurrency limit. (20 since the gateway started; logged one line per 10)",
        "Something else.",
    ]


def test_the_defaults_are_what_the_readme_says_and_reach_uvicorn(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, webhook_secret=SecretStr(SECRET))  # type: ignore[call-arg]
    app = create_app(settings, store_url=f"sqlite+aiosqlite:///{tmp_path / 'inbox.db'}")
    config = server_config(app, settings, port=free_port())
    protocol: Any = config.http

    assert protocol.header_timeout == settings.gateway_header_timeout_seconds == 10
    assert app.state.config.body_timeout == settings.gateway_body_timeout_seconds == 30
    assert config.timeout_keep_alive == settings.gateway_keep_alive_seconds == 5
    assert config.limit_concurrency == settings.gateway_max_connections + 1 == 201
    rejections = app.state.rejections
    assert (rejections.limit, rejections.window, rejections.log_every) == (20, 60, 100)
    assert protocol.rejections is rejections  # a slow head counts as a refusal
    assert config.forwarded_allow_ips == "127.0.0.1,::1"
