"""P1: how fast the gateway acknowledges signed webhooks, next to a bare FastAPI endpoint.

    uv run python bench/gateway_latency.py [--rate 50] [--seconds 20]
    uv run python bench/gateway_latency.py --stack [--rate 50] [--seconds 20]

Alone (the default): runs the gateway (signature check, envelope validation, inbox insert on
SQLite, 202) in a child process with uvicorn, adds a bare `POST /bare` endpoint to the same
app, and sends signed webhooks (each a new event) and bare requests alternately at a fixed
total rate from this process. The dispatcher is off: this measures the acknowledgement alone.

`--stack` (issue 18's P1): the whole one-host stack (`pf-jira-sync up --sandbox`) runs, and
the webhooks are real hires made in the PeopleForce simulator (their exact signed bodies), so
the dispatcher, the flow runs and the simulators work on them while the gateway answers, as
they do for PeopleForce. Signed webhooks go at `--rate` a second to the gateway and, in the
same run, requests at the same rate to a bare FastAPI endpoint served by uvicorn in its own
process on this host. Target: webhook p99 <= 15 ms and <= 3x the bare endpoint's p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import httpx

SECRET = "bench-secret"


def serve(port: int, data_dir: str) -> None:
    import uvicorn
    from fastapi import Response
    from pydantic import SecretStr

    from core.logging import configure_logging
    from core.settings import Settings
    from webhook_gateway import create_app

    configure_logging(level="WARNING")
    settings = Settings(
        _env_file=None,
        webhook_secret=SecretStr(SECRET),
        data_dir=Path(data_dir),
        log_level="WARNING",
    )
    app = create_app(settings)

    @app.post("/bare", status_code=202)
    async def bare() -> Response:
        return Response(status_code=202)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve_bare(port: int) -> None:
    import uvicorn
    from fastapi import FastAPI, Response

    app = FastAPI()

    @app.post("/bare", status_code=202)
    async def bare() -> Response:
        return Response(status_code=202)

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def body(n: int) -> bytes:
    return json.dumps(
        {
            "action": "employee_update",
            "data": {
                "id": 100000 + n,
                "attributes": {"first_name": "Bench", "last_name": f"Person{n}"},
                "meta": {"updated_at": f"2026-11-26T10:{n // 60 % 60:02d}:{n % 60:02d}+03:00"},
            },
        },
        separators=(",", ":"),
    ).encode()


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=1000)[int(q * 1000) - 1] if len(values) > 1 else values[0]


async def load(
    base: str, rate: float, seconds: float, first: int = 0
) -> tuple[list[float], list[float], int]:
    from core.peopleforce.signature import SIGNATURE_HEADER, sign

    webhook, bare, errors = [], [], 0
    total = int(rate * seconds)
    async with httpx.AsyncClient(base_url=base, timeout=10) as client:
        started = time.perf_counter()

        async def one(n: int) -> None:
            nonlocal errors
            await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
            if n % 2 == 0:
                raw = body(first + n)  # every webhook a new event
                headers = {SIGNATURE_HEADER: sign(SECRET, raw), "content-type": "application/json"}
                t0 = time.perf_counter()
                response = await client.post("/webhooks/peopleforce", content=raw, headers=headers)
                (webhook if response.status_code == 202 else []).append(time.perf_counter() - t0)
            else:
                t0 = time.perf_counter()
                response = await client.post("/bare", content=b"{}")
                bare.append(time.perf_counter() - t0)
            errors += response.status_code != 202

        await asyncio.gather(*(one(n) for n in range(total)))
    return webhook, bare, errors


def wait_healthy(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer")
        time.sleep(0.2)


async def load_stack(
    gateway: str, bare_url: str, deliveries: list[dict], rate: float
) -> tuple[list[float], list[float], int]:
    """Each delivery to the gateway at `rate` a second, and as many bare requests beside them."""
    from core.peopleforce.signature import SIGNATURE_HEADER

    webhook, bare, errors = [], [], 0
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(timeout=10, trust_env=False, limits=limits) as client:
        started = time.perf_counter()

        async def timed(
            n: int, send: Callable[[], Awaitable[httpx.Response]], into: list[float]
        ) -> None:
            nonlocal errors
            await asyncio.sleep(max(0.0, started + n / rate - time.perf_counter()))
            t0 = time.perf_counter()
            try:
                response = await send()
            except httpx.TransportError:  # no answer within the client's 10 s: an error
                errors += 1
                return
            if response.status_code in (200, 202):
                into.append(time.perf_counter() - t0)
            else:
                errors += 1

        def to_gateway(delivery: dict) -> Awaitable[httpx.Response]:
            return client.post(
                f"{gateway}/webhooks/peopleforce",
                content=delivery["body"].encode(),
                headers={
                    "content-type": "application/json",
                    SIGNATURE_HEADER: delivery["signature"],
                },
            )

        await asyncio.gather(
            *(timed(n, partial(to_gateway, d), webhook) for n, d in enumerate(deliveries)),
            *(
                timed(n, partial(client.post, bare_url, content=b"{}"), bare)
                for n in range(len(deliveries))
            ),
        )
    return webhook, bare, errors


def in_stack(rate: float, seconds: float) -> tuple[list[float], list[float], int]:
    from bench.stack_throughput import BREAKER_OFF, Stack, recorded_hires
    from sandbox.server import free_port

    count = int(rate * seconds)
    bare_port = free_port()
    bare_server = multiprocessing.get_context("spawn").Process(target=serve_bare, args=(bare_port,))
    bare_server.start()
    with tempfile.TemporaryDirectory(prefix="pf-bench-") as tmp:
        print("starting pf-jira-sync up --sandbox ...", flush=True)
        stack = Stack.start(Path(tmp) / "data", {"LOG_LEVEL": "WARNING", **BREAKER_OFF})
        try:
            wait_healthy(f"http://127.0.0.1:{bare_port}/docs")
            with httpx.Client(trust_env=False, timeout=60) as http:
                # Their work runs while the bench measures: it posts them on schedule.
                _, deliveries = recorded_hires(http, stack.peopleforce_control, count, "Load")
            print(f"made {count} hires; posting their webhooks at {rate:.0f}/s ...", flush=True)
            return asyncio.run(
                load_stack(stack.gateway, f"http://127.0.0.1:{bare_port}/bare", deliveries, rate)
            )
        finally:
            stack.stop()
            bare_server.terminate()
            bare_server.join()


def alone(rate: float, seconds: float) -> tuple[list[float], list[float], int]:
    from sandbox.server import free_port

    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        server = multiprocessing.get_context("spawn").Process(target=serve, args=(port, data_dir))
        server.start()
        base = f"http://127.0.0.1:{port}"
        wait_healthy(f"{base}/healthz")
        asyncio.run(load(base, rate, 2, first=10**6))  # warm up: connections, SQLite file
        webhook, bare, errors = asyncio.run(load(base, rate, seconds))
        server.terminate()
        server.join()
    return webhook, bare, errors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument(
        "--stack", action="store_true", help="into the running one-host stack, with its work"
    )
    arguments = parser.parse_args()
    if arguments.stack:
        webhook, bare, errors = in_stack(arguments.rate, arguments.seconds)
    else:
        webhook, bare, errors = alone(arguments.rate, arguments.seconds)
    ms = 1000
    where = "into the running stack" if arguments.stack else "alone"
    print(
        f"P1 gateway acknowledgement {where}, {arguments.rate:.0f} req/s for {arguments.seconds:.0f} s"
    )
    print(
        f"  signed webhook -> 202: n={len(webhook)} p50={percentile(webhook, 0.5) * ms:.1f} ms p99={percentile(webhook, 0.99) * ms:.1f} ms"
    )
    print(
        f"  bare endpoint  -> 202: n={len(bare)} p50={percentile(bare, 0.5) * ms:.1f} ms p99={percentile(bare, 0.99) * ms:.1f} ms"
    )
    ratio = percentile(webhook, 0.99) / percentile(bare, 0.99)
    print(f"  p99 ratio webhook/bare: {ratio:.1f}x; errors: {errors}")
    if arguments.stack:
        p99 = percentile(webhook, 0.99) * ms
        verdict = "PASS" if p99 <= 15 and ratio <= 3 and not errors else "FAIL"
        print(f"  target: p99 <= 15 ms and <= 3x bare, 0 errors: {verdict}")
    print(f"(measured {datetime.now(UTC):%Y-%m-%d} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    main()
