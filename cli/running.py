"""Running the service: `up` (one host), `deploy` and `worker` (a Prefect work pool), `alerts`."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from cli.app import app, console, errors, fail, load_settings, prefect_api_url, run_on_prefect
from core.settings import Settings, mask_url


@app.command()
def up(
    sandbox: Annotated[
        bool,
        typer.Option(
            "--sandbox",
            help="Also run both simulators and point the service at them (no credentials needed).",
        ),
    ] = False,
) -> None:
    """Run the service on this host: Prefect server, served deployments, webhook gateway.

    Prints the URLs once everything answers; Ctrl-C stops it all. A part that fails its first
    start is reported with the end of its log (under DATA_DIR/logs) and the command exits
    non-zero; a part that dies later is restarted (backoff 0.5 s doubling to 30 s), with a
    line that says which, why and the how-many-th restart.
    """
    from deployments.stack import run_stack, webhook_url
    from sandbox.stack import Simulators

    # `up` runs what its own settings say, never a sandbox another `up` runs.
    settings = load_settings(running_sandbox=False)
    simulators = (
        Simulators(
            host=settings.sandbox_host,
            peopleforce_port=settings.sandbox_peopleforce_port,
            jira_port=settings.sandbox_jira_port,
            webhook_url=webhook_url(settings),
            jira_rate_limits=settings.sandbox_jira_rate_limits,
        )
        if sandbox
        else None
    )
    raise typer.Exit(run_stack(settings, simulators=simulators))


def deploy_to_work_pool(settings: Settings, work_pool: str, concurrency_limit: int | None) -> None:
    """Register every deployment on the work pool and print them; exit 1 when Prefect refuses."""
    from deployments.work_pool import WorkPoolError, deploy_all

    async def deploy_everything() -> Any:
        try:
            return await deploy_all(work_pool, settings, concurrency_limit=concurrency_limit)
        except WorkPoolError as error:
            fail(str(error))

    deployed = run_on_prefect(prefect_api_url(settings), deploy_everything)
    for deployment in deployed:
        console.print(
            f"deployed {deployment.full_name} to work pool {work_pool} ({deployment.id})",
            highlight=False,
            soft_wrap=True,
        )


WorkPoolOption = Annotated[
    str | None,
    typer.Option("--work-pool", "-p", help="The work pool; default WORK_POOL (pf-jira-sync)."),
]


@app.command()
def deploy(
    work_pool: WorkPoolOption = None,
    concurrency_limit: Annotated[
        int | None,
        typer.Option(
            "--concurrency-limit",
            min=1,
            help="Flow runs at once over all the pool's workers (default: no pool-wide limit).",
        ),
    ] = None,
) -> None:
    """Register every deployment on a Prefect process work pool (created when missing).

    Same names as the served deployments, so the gateway needs no change. Then start
    `pf-jira-sync worker` on each host that should run flows. Safe to run again (an upgrade).
    """
    settings = load_settings(running_sandbox=False)
    pool = work_pool or settings.work_pool
    deploy_to_work_pool(settings, pool, concurrency_limit)
    console.print(
        f"start workers on each host: pf-jira-sync worker --work-pool {pool}", highlight=False
    )


def worker_environment(settings: Settings, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment a worker hands to its flow runs: this process's, plus `.env` (flow runs
    start in a temporary directory, where no `.env` is read), with paths made absolute and this
    interpreter's folder first on PATH (the worker starts `python -m prefect.engine`)."""
    from dotenv import dotenv_values

    environ = dict(os.environ if environ is None else environ)
    from_file = {name: value for name, value in dotenv_values(".env").items() if value and name}
    env = {**from_file, **environ}
    interpreter_dir = str(Path(sys.executable).parent)
    env.update(
        {
            "DATA_DIR": str(settings.data_dir.resolve()),
            "RULES_FILE": str(settings.rules_file.resolve()),
            "DATABASE_URL": settings.effective_database_url,
            "PREFECT_API_URL": prefect_api_url(settings),
            # Fail fast instead of a silent temporary server when the API is unreachable.
            "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
            # What crash detection listens for (deployments/alerts.py): Prefect's default,
            # 180 s, is longer than the silence after which a run counts as crashed.
            "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(settings.flow_heartbeat_seconds),
            "PATH": os.pathsep.join([interpreter_dir, env.get("PATH", "")]).rstrip(os.pathsep),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@app.command()
def worker(
    work_pool: WorkPoolOption = None,
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit", min=1, max=64, help="Flow runs at once on this host; default WORKER_LIMIT."
        ),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="The worker's name in the Prefect UI.")
    ] = None,
    deploy_first: Annotated[
        bool,
        typer.Option(
            "--deploy", help="Register the work pool and the deployments first (as `deploy`)."
        ),
    ] = False,
    with_healthcheck: Annotated[
        bool,
        typer.Option(
            "--with-healthcheck",
            help="Serve GET /health on PREFECT_WORKER_WEBSERVER_PORT (default 8080).",
        ),
    ] = False,
) -> None:
    """Run a Prefect process worker for this service's deployments, until Ctrl-C.

    Start one on each host that should run flows; all of them share one Prefect server and the
    mapping store (DATABASE_URL on PostgreSQL). Flow runs get this service's settings.

    It becomes the Prefect worker and restarts nothing itself: run it under something that
    restarts it (compose's `restart: unless-stopped`, systemd's `Restart=always`). It rides
    out a Prefect server that restarts, and exits non-zero when the server stays unreachable
    for many minutes (or, with --deploy, is unreachable as it starts).
    """
    from sqlalchemy.engine import make_url

    from core.rules import RulesError, load_rules

    settings = load_settings(running_sandbox=False)
    pool = work_pool or settings.work_pool
    env = worker_environment(settings)
    try:
        load_rules(settings.rules_file)  # every flow run reads them: refuse a bad file now
    except RulesError as error:
        fail(str(error), code=2)
    if make_url(settings.effective_database_url).get_backend_name() == "sqlite":
        errors.print(
            f"[yellow]note:[/] the mapping store is a SQLite file on this host "
            f"({mask_url(settings.effective_database_url)}): workers on other hosts need the same "
            "DATABASE_URL, a PostgreSQL database",
            highlight=False,
            soft_wrap=True,
        )
    if deploy_first:
        deploy_to_work_pool(settings, pool, None)
    command = [
        sys.executable,
        "-m",
        "prefect",
        "worker",
        "start",
        "--pool",
        pool,
        "--type",
        "process",
        "--limit",
        str(limit or settings.worker_limit),
    ]
    if name:
        command += ["--name", name]
    if with_healthcheck:
        command.append("--with-healthcheck")
    sys.stdout.flush()
    sys.stderr.flush()
    # The worker becomes this process: signals (Ctrl-C, `docker stop`) reach it directly.
    os.execve(sys.executable, command, env)  # noqa: S606 (our own interpreter, no shell)


alerts_app = typer.Typer(
    help="Alerts on failed runs: a Prefect automation posts each failed or crashed run of the "
    "deployments to ALERT_WEBHOOK_URL (a Slack or Teams incoming webhook, or any URL).",
    no_args_is_help=True,
)


app.add_typer(alerts_app, name="alerts")


def alert_settings() -> tuple[Settings, str]:
    """The settings and the Prefect API URL, or exit 2 naming what is missing."""
    settings = load_settings()
    why = (
        "the alerts are an automation in that Prefect server (e.g. http://127.0.0.1:4200/api; "
        "`up` installs them itself when ALERT_WEBHOOK_URL is set)"
    )
    return settings, prefect_api_url(settings, why)


@alerts_app.command("install")
def alerts_install() -> None:
    """Create or update the automation and the webhook block (run again after changing the URL)."""
    from deployments.alerts import (
        AUTOMATION_NAME,
        BLOCK_NAME,
        BREAKER_AUTOMATION_NAME,
        install_alerts,
    )

    settings, api_url = alert_settings()
    if settings.alert_webhook_url is None:
        fail("ALERT_WEBHOOK_URL is not set: the URL failed runs are posted to", code=2)
    url = settings.alert_webhook_url.get_secret_value()
    installed = run_on_prefect(api_url, lambda: install_alerts(url))
    console.print(
        f"{'installed' if installed.created else 'updated'} the automation {AUTOMATION_NAME!r} "
        f"({installed.automation_id}) in {mask_url(api_url)}: failed, crashed and timed-out runs of the "
        f"pf-jira-sync deployments are posted to the URL in the webhook block {BLOCK_NAME!r}, "
        f"and by {BREAKER_AUTOMATION_NAME!r} each run that held work at the circuit breaker",
        highlight=False,
        soft_wrap=True,
    )


@alerts_app.command("remove")
def alerts_remove() -> None:
    """Delete the automation: failed runs are no longer posted anywhere."""
    from deployments.alerts import AUTOMATION_NAME, BREAKER_AUTOMATION_NAME, uninstall_alerts

    _, api_url = alert_settings()
    removed = run_on_prefect(api_url, uninstall_alerts)
    console.print(
        f"removed {removed} automation(s) named {AUTOMATION_NAME!r} or "
        f"{BREAKER_AUTOMATION_NAME!r} from {mask_url(api_url)}",
        highlight=False,
    )


@alerts_app.command("test")
def alerts_test() -> None:
    """Post a test message to ALERT_WEBHOOK_URL directly (checks the URL, not Prefect)."""
    settings = load_settings()
    if settings.alert_webhook_url is None:
        fail("ALERT_WEBHOOK_URL is not set: the URL failed runs are posted to", code=2)
    body = {
        "text": "pf-jira-sync: test alert (`pf-jira-sync alerts test`); failed runs look like this"
    }
    try:
        response = httpx.post(settings.alert_webhook_url.get_secret_value(), json=body, timeout=15)
    except httpx.HTTPError as error:
        # The error text may hold the URL: it is a secret.
        fail(f"the alert webhook did not answer ({type(error).__name__})")
    if response.is_error:
        fail(f"the alert webhook refused the message: HTTP {response.status_code}")
    console.print(f"posted a test alert: HTTP {response.status_code}", highlight=False)
