"""`sandbox`: run the local PeopleForce and Jira simulators, and drive the PeopleForce one
(`hire`, `update`, `terminate`, `revert`, `start`), which sends the signed webhooks."""

from __future__ import annotations

import signal
import time
from datetime import date, datetime, timedelta
from typing import Annotated, Any

import httpx
import typer

from cli.app import app, console, errors, fail, load_settings
from core import one_host
from core.settings import Settings

sandbox_app = typer.Typer(
    help="Local PeopleForce and Jira simulators. Alone: run both until Ctrl-C. The subcommands "
    "drive a running PeopleForce simulator (the one `up --sandbox` starts, for instance), which "
    "sends the signed webhooks.",
    no_args_is_help=False,
)


app.add_typer(sandbox_app, name="sandbox")


class SandboxControl:
    """The PeopleForce simulator's control endpoints (`/_sandbox`), which send the webhooks."""

    def __init__(self, settings: Settings) -> None:
        from deployments.stack import url_host

        self.url = f"http://{url_host(settings.sandbox_host)}:{settings.sandbox_peopleforce_port}"
        # A control call returns only after the simulator delivered its webhooks: allow for that.
        self.client = httpx.Client(base_url=self.url + "/_sandbox", timeout=60, trust_env=False)

    def __enter__(self) -> SandboxControl:
        return self

    def __exit__(self, *_: object) -> None:
        self.client.close()

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        try:
            response = self.client.request(method, path, json=body)
        except httpx.ConnectError:
            fail(
                f"no sandbox at {self.url}: start it with `make run` "
                f"(or `{one_host.command('up', '--sandbox')}`)"
            )
        except httpx.TransportError as error:
            fail(f"the sandbox at {self.url} did not answer: {type(error).__name__}: {error}")
        if response.is_error:
            fail(f"the sandbox refused: {describe_refusal(response)}")
        return response.json()

    def last_delivery_id(self) -> int:
        return max((delivery["id"] for delivery in self.call("GET", "/webhooks")), default=0)

    def change(self, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        """Make the change, print the employee and each webhook it sent; exit 1 if one failed."""
        before = self.last_delivery_id()
        person = self.call(method, path, body)
        console.print(describe_person(person), highlight=False, soft_wrap=True)
        sent = [
            delivery
            for delivery in self.call("GET", "/webhooks")
            if delivery["id"] > before and delivery["employee_id"] == person["id"]
        ]
        if not sent:
            if self.call("GET", "/webhook-target")["url"]:
                reason = "PeopleForce sends none for this change"
            else:
                reason = (
                    "the simulator has no webhook target (`up --sandbox` points it at the gateway)"
                )
            console.print(f"no webhook sent: {reason}", highlight=False, soft_wrap=True)
            return
        for delivery in sent:
            console.print(describe_delivery(delivery), highlight=False, soft_wrap=True)
        if not all(delivery["ok"] for delivery in sent):
            fail("the webhook was not accepted: see the gateway's log (DATA_DIR/logs/gateway.log)")

    def today(self) -> date:
        return date.fromisoformat(self.call("GET", "/clock")["today"])


def describe_refusal(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}"
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    if isinstance(body, dict) and isinstance(body.get("detail"), list):  # FastAPI validation
        problems = [
            f"{'.'.join(str(part) for part in item.get('loc', [])[1:])}: {item.get('msg')}"
            for item in body["detail"]
        ]
        return "; ".join(problems)
    return f"HTTP {response.status_code}: {body}"


def describe_person(person: dict[str, Any]) -> str:
    name = " ".join(
        part for part in (person["first_name"], person["middle_name"], person["last_name"]) if part
    )
    line = (
        f"employee {person['id']} {name} ({person['status']}): {person['department']}, "
        f"{person['position']}, {person['location']}; hired on {person['hired_on']}"
    )
    if person.get("termination_effective_on"):
        line += f", leaves on {person['termination_effective_on']}"
    return line


def describe_delivery(delivery: dict[str, Any]) -> str:
    outcome = (
        f"{delivery['status_code']} in {delivery['duration_ms']:.0f} ms"
        if delivery["status_code"] is not None
        else delivery["error"]
    )
    mark = "" if delivery["ok"] else "FAILED "
    return f"webhook {delivery['action']} -> {delivery['url']}: {mark}{outcome}"


@sandbox_app.command("hire")
def sandbox_hire(
    full_name: Annotated[str, typer.Argument(metavar="FULL NAME", help='"First [Middle] Last"')],
    department: Annotated[str | None, typer.Option(help="e.g. Engineering, Sales")] = None,
    position: Annotated[str | None, typer.Option(help="default: Software Engineer")] = None,
    location: Annotated[str | None, typer.Option(help="default: Remote")] = None,
    employment_type: Annotated[
        str | None, typer.Option(help="default: Full-Time (also Part-Time, Contractor ...)")
    ] = None,
    hired_on: Annotated[
        datetime | None,
        typer.Option(formats=["%Y-%m-%d"], metavar="YYYY-MM-DD", help="default: today"),
    ] = None,
    in_days: Annotated[
        int | None, typer.Option(min=0, help="Hire date this many days after the sandbox's today.")
    ] = None,
    manager_id: Annotated[int | None, typer.Option(help="default: the department head")] = None,
    email: Annotated[str | None, typer.Option(help="default: made from the name")] = None,
) -> None:
    """Hire someone in the PeopleForce simulator, which sends the signed webhook(s)."""
    names = full_name.split()
    if len(names) < 2:
        fail(f"give a first and a last name, not {full_name!r}", code=2)
    if hired_on is not None and in_days is not None:
        fail("give --hired-on or --in-days, not both", code=2)
    body: dict[str, Any] = {
        "first_name": names[0],
        "last_name": names[-1],
        "middle_name": " ".join(names[1:-1]),
    }
    given = {
        "department": department,
        "position": position,
        "location": location,
        "employment_type": employment_type,
        "manager_id": manager_id,
        "email": email,
    }
    body.update({name: value for name, value in given.items() if value is not None})
    with SandboxControl(load_settings()) as control:
        if in_days is not None:
            body["hired_on"] = (control.today() + timedelta(days=in_days)).isoformat()
        elif hired_on is not None:
            body["hired_on"] = hired_on.date().isoformat()
        control.change("POST", "/employees", body)


@sandbox_app.command("update")
def sandbox_update(
    employee_id: Annotated[int, typer.Argument(metavar="ID")],
    department: Annotated[str | None, typer.Option()] = None,
    position: Annotated[str | None, typer.Option()] = None,
    location: Annotated[str | None, typer.Option()] = None,
    employment_type: Annotated[str | None, typer.Option()] = None,
    manager_id: Annotated[int | None, typer.Option()] = None,
) -> None:
    """Change an employee's profile in the simulator: `employee_update`."""
    given = {
        "department": department,
        "position": position,
        "location": location,
        "employment_type": employment_type,
        "manager_id": manager_id,
    }
    changes = {name: value for name, value in given.items() if value is not None}
    if not changes:
        fail(
            "nothing to change: give --department, --position, --location, --employment-type "
            "or --manager-id",
            2,
        )
    with SandboxControl(load_settings()) as control:
        control.change("PATCH", f"/employees/{employee_id}", changes)


@sandbox_app.command("terminate")
def sandbox_terminate(
    employee_id: Annotated[int, typer.Argument(metavar="ID")],
    on: Annotated[
        datetime | None,
        typer.Option(
            "--on",
            formats=["%Y-%m-%d"],
            metavar="YYYY-MM-DD",
            help="The last day; default today. A later date is scheduled (nightly batch).",
        ),
    ] = None,
) -> None:
    """Enter a termination: `employee_terminate` now, or `employee_update` for a later date."""
    body = {"effective_on": on.date().isoformat()} if on else {}
    with SandboxControl(load_settings()) as control:
        control.change("POST", f"/employees/{employee_id}/terminate", body)


@sandbox_app.command("revert")
def sandbox_revert(employee_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Cancel a termination (or reactivate a leaver): `employee_termination_revert`."""
    with SandboxControl(load_settings()) as control:
        control.change("POST", f"/employees/{employee_id}/revert")


@sandbox_app.command("start")
def sandbox_start(employee_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """The employee's first day, today: `employee_start`."""
    with SandboxControl(load_settings()) as control:
        control.change("POST", f"/employees/{employee_id}/start")


@sandbox_app.callback(invoke_without_command=True)
def sandbox(ctx: typer.Context) -> None:
    """Run the PeopleForce and Jira simulators on loopback until Ctrl-C."""
    if ctx.invoked_subcommand is not None:
        return
    from sandbox.stack import Simulators

    settings = load_settings(running_sandbox=False)
    # Ctrl-C and SIGTERM stop them, also when started as a background job of a script (which
    # inherits SIGINT ignored, and Python then keeps it ignored).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    with Simulators.from_settings(settings) as simulators:
        for line in simulators.describe():
            console.print(line, highlight=False, soft_wrap=True)
        console.print("Ctrl-C stops them.")
        try:
            while simulators.alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            console.print("stopping")
            return
    errors.print("[red]a simulator stopped unexpectedly[/]")
    raise typer.Exit(1)
