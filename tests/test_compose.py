"""docker-compose.yml, the Dockerfile and the tunnel's ingress, checked without a Docker engine.

The development machines and CI have no Docker, so these tests read the files: the services
the production setup needs, a healthcheck and a restart policy on each, start order on healthy
dependencies (the gateway's on its store only), named volumes, no secret written in the file (every one is a ${VARIABLE} from .env, documented in
.env.example), each of this project's commands a real entry point, healthchecks on the ports
the commands listen on, and a tunnel that routes only `/webhooks/*` to the gateway.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import tomllib
from typing import Any

import prefect
import pytest
import typer
import yaml
from typer.core import TyperGroup

from cli import app as cli_app
from core.names import WEBHOOK_PATH
from core.settings import Settings
from tests.paths import ROOT

COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PROJECT_IMAGE = "pf-jira-sync:local"
# Built from this repository's Dockerfile: their commands must exist in this project.
PROJECT_SERVICES = {"worker", "gateway"}
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 (inside a container: other services connect)
VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)(?:(:?[-?])([^}]*))?\}")
SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|AUTH|API_KEY|CREDENTIAL", re.IGNORECASE)
URL_PASSWORD = re.compile(r"://[^:/@\s]+:([^@\s]+)@")


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {name: str(value) for name, value in env.items()}


def command(service: dict[str, Any]) -> list[str]:
    value = service.get("command")
    return shlex.split(value) if isinstance(value, str) else list(value or [])


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def all_strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [text for item in value.values() for text in all_strings(item)]
    if isinstance(value, list):
        return [text for item in value for text in all_strings(item)]
    return [value] if isinstance(value, str) else []


def test_the_production_services_are_all_there() -> None:
    assert set(SERVICES) == {
        "postgres",
        "prefect-server",
        "worker",
        "gateway",
        "seq",
        "cloudflared",
    }
    assert SERVICES["postgres"]["image"].startswith("postgres:")
    assert SERVICES["seq"]["image"].startswith("datalust/seq")
    assert SERVICES["cloudflared"]["image"].startswith("cloudflare/cloudflared")
    for name in PROJECT_SERVICES:
        assert SERVICES[name]["image"] == PROJECT_IMAGE
        assert SERVICES[name]["build"] == "."


def test_the_prefect_server_is_the_official_image_of_the_locked_version_on_postgresql() -> None:
    server = SERVICES["prefect-server"]
    image, tag = server["image"].split(":")
    assert image == "prefecthq/prefect"
    # Client (this project, uv.lock) and server on the same Prefect version.
    assert tag.split("-")[0] == prefect.__version__
    env = environment(server)
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql+asyncpg://")
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"].endswith("@postgres:5432/prefect")
    assert command(server)[:3] == ["prefect", "server", "start"]
    assert option(command(server), "--host") == ALL_INTERFACES
    assert "--workers" not in command(server)  # one API process: no Redis needed


def test_the_prefect_api_is_protected_and_every_client_sends_the_credentials() -> None:
    server = environment(SERVICES["prefect-server"])
    auth = server["PREFECT_SERVER_API_AUTH_STRING"]
    variable = VARIABLE.fullmatch(auth)
    assert variable is not None, auth
    for name in PROJECT_SERVICES:
        env = environment(SERVICES[name])
        sent = VARIABLE.fullmatch(env["PREFECT_API_AUTH_STRING"])
        assert sent is not None, name
        assert sent[1] == variable[1], name
        assert env["PREFECT_API_URL"] == "http://prefect-server:4200/api"
        assert env["PREFECT_SERVER_EPHEMERAL_ENABLED"] == "false"
    # Published on the host's loopback only: never on a public interface.
    for service in SERVICES.values():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), port


def test_the_mapping_store_is_its_own_database_on_the_same_postgresql() -> None:
    for name in PROJECT_SERVICES:
        url = environment(SERVICES[name])["DATABASE_URL"]
        assert url.startswith("postgresql+asyncpg://")
        assert url.endswith("@postgres:5432/pf_jira_sync")
    init = (ROOT / "deploy/postgres/init-databases.sql").read_text()
    assert "CREATE DATABASE prefect;" in init
    assert "CREATE DATABASE pf_jira_sync;" in init
    mounts = SERVICES["postgres"]["volumes"]
    assert (
        "./deploy/postgres/init-databases.sql:/docker-entrypoint-initdb.d/10-databases.sql:ro"
        in mounts
    )
    # The image would otherwise create a database named after the user, which may clash.
    assert environment(SERVICES["postgres"])["POSTGRES_DB"] == "postgres"


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies() -> None:
    for name, service in SERVICES.items():
        check = service.get("healthcheck")
        assert check, name
        assert check.get("test"), name
        assert not check.get("disable"), name
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in SERVICES, (name, dependency)
            assert condition == {"condition": "service_healthy"}, (name, dependency)
    needs = {name: set(service.get("depends_on", {})) for name, service in SERVICES.items()}
    assert needs["prefect-server"] == {"postgres"}
    assert needs["worker"] == {"postgres", "prefect-server"}  # `worker --deploy` registers there
    assert needs["cloudflared"] == {"gateway"}


def test_every_service_is_started_again_when_its_process_dies() -> None:
    for name, service in SERVICES.items():
        # Every one runs for as long as the stack does: restarted on any exit and after a
        # reboot, not only on a failure (`on-failure` leaves a clean exit down).
        assert service.get("restart") == "unless-stopped", name
        assert "deploy" not in service, name  # Swarm's restart_policy would be ignored here
    for name in PROJECT_SERVICES:
        # An init as PID 1: signals reach the command, and what it leaves behind is reaped.
        assert SERVICES[name].get("init") is True, name


def test_the_gateway_takes_webhooks_whether_or_not_the_prefect_server_answers() -> None:
    """It depends on its store only: at a `docker compose up` it does not wait for the Prefect
    server to be healthy, and nothing ties its restarts to the Prefect server's. Its events wait
    in the inbox until the dispatcher can hand them over."""
    gateway = SERVICES["gateway"]
    assert set(gateway["depends_on"]) == {"postgres"}
    assert all("restart" not in condition for condition in gateway["depends_on"].values())
    # Its healthcheck is the liveness one (/healthz), not /readyz, which checks Prefect too:
    # the tunnel starts once the gateway answers, Prefect or not.
    assert "/healthz" in " ".join(gateway["healthcheck"]["test"])
    assert "/readyz" not in " ".join(gateway["healthcheck"]["test"])


def test_healthchecks_probe_what_the_commands_serve() -> None:
    def probe(name: str) -> str:
        return " ".join(SERVICES[name]["healthcheck"]["test"][1:])

    gateway_port = option(command(SERVICES["gateway"]), "--port")
    assert f"http://127.0.0.1:{gateway_port}/healthz" in probe("gateway")
    assert "http://127.0.0.1:4200/api/health" in probe("prefect-server")
    assert "--with-healthcheck" in command(SERVICES["worker"])
    assert "http://127.0.0.1:8080/health" in probe("worker")  # Prefect's worker webserver port
    assert probe("postgres").startswith("pg_isready")
    assert "node health" in probe("seq")
    metrics = option(command(SERVICES["cloudflared"]), "--metrics")
    assert (
        probe("cloudflared")
        == f"cloudflared tunnel --metrics 127.0.0.1:{metrics.split(':')[1]} ready"
    )


def test_state_lives_in_named_volumes() -> None:
    named = set(COMPOSE["volumes"])
    assert {"postgres-data", "prefect-data", "seq-data", "app-data"} <= named
    expected = {
        "postgres": "/var/lib/postgresql/data",
        "prefect-server": "/root/.prefect",
        "seq": "/data",
        "worker": "/app/data",
        "gateway": "/app/data",
    }
    for name, target in expected.items():
        mounts = [str(m).split(":") for m in SERVICES[name]["volumes"]]
        sources = [source for source, mounted, *_ in mounts if mounted == target]
        assert sources, (name, mounts)
        assert sources[0] in named, (name, mounts)


def test_no_secret_is_written_in_the_compose_file() -> None:
    for name, service in SERVICES.items():
        for key, value in environment(service).items():
            if SECRET_NAME.search(key):
                assert VARIABLE.fullmatch(value), f"{name}: {key} must come from .env"
            for password in URL_PASSWORD.findall(value):
                assert VARIABLE.fullmatch(password), f"{name}: {key} has a password in its URL"
    # Required secrets fail loudly when unset (`${VAR:?why}`), instead of an empty password.
    text = "\n".join(all_strings(COMPOSE))
    for variable in (
        "POSTGRES_PASSWORD",
        "PREFECT_AUTH_STRING",
        "SEQ_ADMIN_PASSWORD",
        "TUNNEL_TOKEN",
    ):
        uses = [m for m in VARIABLE.finditer(text) if m[1] == variable]
        assert uses, variable
        assert all(m[2] == ":?" for m in uses), variable


def test_every_variable_the_compose_file_reads_is_documented_in_env_example() -> None:
    text = "\n".join(all_strings(COMPOSE))
    used = {match[1] for match in VARIABLE.finditer(text)}
    example = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert used - documented == set()
    # And the project services read the service's own settings from .env.
    for name in PROJECT_SERVICES:
        assert SERVICES[name]["env_file"] == ".env"
    ignored = (ROOT / ".gitignore").read_text().split() + (
        ROOT / ".dockerignore"
    ).read_text().split()
    assert ignored.count(".env") == 2


def project_command_exists(args: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """`args` runs a real entry point of this project, with options it accepts."""
    if args[:2] == ["python", "-m"]:
        module = args[2]
        assert importlib.util.find_spec(f"{module}.__main__") is not None, module
        entry = importlib.import_module(f"{module}.__main__")
        # The module's own argument parsing (argparse exits 2 on an unknown option), with the
        # server it would start replaced by a recorder.
        started: list[dict[str, Any]] = []
        monkeypatch.setattr(entry, "serve", lambda settings, **options: started.append(options))
        monkeypatch.setattr(entry, "get_settings", lambda: None)
        assert entry.main(args[3:]) == 0
        assert len(started) == 1, started
        return
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert args[0] in scripts, args[0]
    assert scripts[args[0]] == "cli:app"
    group = typer.main.get_command(cli_app)
    assert isinstance(group, TyperGroup)
    subcommand = group.get_command(group.make_context("pf-jira-sync", [args[1]]), args[1])
    assert subcommand is not None, f"pf-jira-sync has no command {args[1]!r}"
    # Raises on an unknown option or a bad value, without running the command.
    subcommand.make_context(args[1], list(args[2:]))


def test_project_services_run_real_entry_points_of_this_project(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in PROJECT_SERVICES:
        project_command_exists(command(SERVICES[name]), monkeypatch)
    assert command(SERVICES["gateway"])[:3] == ["python", "-m", "webhook_gateway"]
    assert option(command(SERVICES["gateway"]), "--host") == ALL_INTERFACES
    assert command(SERVICES["worker"])[:3] == ["pf-jira-sync", "worker", "--deploy"]


def test_the_compose_environment_names_real_settings() -> None:
    settings = {name.upper() for name in Settings.model_fields}
    for name in PROJECT_SERVICES:
        ours = {key for key in environment(SERVICES[name]) if not key.startswith("PREFECT_")}
        assert ours <= settings, ours - settings


def test_the_tunnel_routes_only_the_webhook_path_to_the_gateway() -> None:
    tunnel = SERVICES["cloudflared"]
    args = command(tunnel)
    assert args[0] == "tunnel"
    assert args[-1] == "run"
    assert "--no-autoupdate" in args
    config_path = option(args, "--config")
    mounts = {m.split(":")[1]: m.split(":")[0] for m in tunnel["volumes"]}
    assert mounts[config_path] == "./deploy/cloudflared/config.yml"
    config = yaml.safe_load((ROOT / "deploy/cloudflared/config.yml").read_text())
    *rules, last = config["ingress"]
    # Everything that no rule names is answered 404 by cloudflared itself.
    assert last == {"service": "http_status:404"}
    gateway_port = option(command(SERVICES["gateway"]), "--port")
    assert rules == [{"path": "^/webhooks/", "service": f"http://gateway:{gateway_port}"}]
    pattern = re.compile(rules[0]["path"])
    assert pattern.match(WEBHOOK_PATH)  # what PeopleForce posts to
    for hidden in ("/", "/api/health", "/healthz", "/readyz", "/docs", "/webhooks", "/x/webhooks/"):
        assert not pattern.match(hidden), hidden
    # Cloudflared is on the edge network only: it cannot reach the Prefect server or Seq at all.
    assert tunnel["networks"] == ["edge"]
    assert set(SERVICES["gateway"]["networks"]) == {"backend", "edge"}
    for name in ("postgres", "prefect-server", "seq", "worker"):
        assert "edge" not in SERVICES[name]["networks"], name
    assert VARIABLE.fullmatch(environment(tunnel)["TUNNEL_TOKEN"])
    # The gateway tells senders apart by the address the tunnel names, trusted from `edge` only.
    (edge,) = COMPOSE["networks"]["edge"]["ipam"]["config"]
    assert environment(SERVICES["gateway"])["GATEWAY_FORWARDED_ALLOW_IPS"] == edge["subnet"]


def test_the_dockerfile_builds_from_the_lock_as_a_non_root_user() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    instructions = [line.strip() for line in dockerfile.splitlines() if not line.startswith("#")]
    syncs = [line for line in instructions if "uv sync" in line]
    assert syncs
    assert all("--locked" in line and "--no-dev" in line for line in syncs)
    assert "COPY pyproject.toml uv.lock ./" in instructions
    users = [line for line in instructions if line.startswith("USER ")]
    assert users
    assert users[-1] not in ("USER root", "USER 0")
    assert not any(line.startswith(("COPY .env", "ADD .env")) for line in instructions)
    assert "COPY . ." not in instructions  # only what the image needs
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".venv", ".tools", ".git", "data"} <= set(dockerignore)
    # Every package the wheel ships is copied in before the project is installed.
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]
    for package in packages["targets"]["wheel"]["packages"]:
        assert f"COPY {package} ./{package}" in instructions, package
