"""P1: how fast the gateway acknowledges signed webhooks, next to a bare FastAPI endpoint.

    uv run python bench/gateway_latency.py [--rate 50] [--seconds 20]

Runs the gateway (signature check, envelope validation, inbox insert on SQLite, 202) in a
child process with uvicorn, adds a bare `POST /bare` endpoint to the same app, and sends
signed webhooks (each a new event) and bare requests alternately at a fixed total rate from
this process. Prints p50/p99 for both. The dispatcher is off: this measures the acknowledgement.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import tempfile
import time
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="requests per second in all")
    parser.add_argument("--seconds", type=float, default=20.0)
    arguments = parser.parse_args()
    from sandbox.server import free_port

    port = free_port()
    with tempfile.TemporaryDirectory() as data_dir:
        server = multiprocessing.get_context("spawn").Process(target=serve, args=(port, data_dir))
        server.start()
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit("gateway did not start")
            time.sleep(0.2)
        asyncio.run(load(base, arguments.rate, 2, first=10**6))  # warm up: connections, SQLite file
        webhook, bare, errors = asyncio.run(load(base, arguments.rate, arguments.seconds))
        server.terminate()
        server.join()
    ms = 1000
    print(f"P1 gateway acknowledgement at {arguments.rate:.0f} req/s for {arguments.seconds:.0f} s")
    print(
        f"  signed webhook -> 202: n={len(webhook)} p50={percentile(webhook, 0.5) * ms:.1f} ms p99={percentile(webhook, 0.99) * ms:.1f} ms"
    )
    print(
        f"  bare endpoint  -> 202: n={len(bare)} p50={percentile(bare, 0.5) * ms:.1f} ms p99={percentile(bare, 0.99) * ms:.1f} ms"
    )
    print(
        f"  p99 ratio webhook/bare: {percentile(webhook, 0.99) / percentile(bare, 0.99):.1f}x; errors: {errors}"
    )


if __name__ == "__main__":
    main()
