"""Both simulators together, seeded with the same people, on the ports from the settings.

Used by `pf-jira-sync sandbox`, and by anything that needs a PeopleForce and a Jira to talk
to without credentials (the demo stack, benchmarks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from types import TracebackType

from core.settings import Settings, mask_url
from sandbox import jira, peopleforce
from sandbox.jira_limits import RateLimits
from sandbox.seed import SeedPerson, seed_people
from sandbox.server import BackgroundServer

# Credentials the simulators accept. They guard nothing real: only loopback simulators use them.
PEOPLEFORCE_API_KEY = "sandbox-peopleforce-key"
JIRA_EMAIL = "sync-bot@example.com"
JIRA_API_TOKEN = "sandbox-jira-token"
WEBHOOK_SECRET = "sandbox-webhook-secret"


@dataclass
class Simulators:
    host: str = "127.0.0.1"
    peopleforce_port: int = 0
    jira_port: int = 0
    webhook_url: str | None = None
    today: date = field(default_factory=date.today)
    people: list[SeedPerson] = field(default_factory=list)
    jira_rate_limits: bool = False  # enforce Jira's rate limits (sandbox.jira_limits)

    def __post_init__(self) -> None:
        self.people = self.people or seed_people(today=self.today)
        self.peopleforce_app = peopleforce.create_app(
            api_key=PEOPLEFORCE_API_KEY,
            people=self.people,
            webhook_url=self.webhook_url,
            webhook_secret=WEBHOOK_SECRET,
            today=self.today,
        )
        self.jira_app = jira.create_app(
            email=JIRA_EMAIL,
            api_token=JIRA_API_TOKEN,
            users=[(person.email, person.full_name) for person in self.people if person.email],
            rate_limits=RateLimits(enabled=self.jira_rate_limits),
        )
        self._servers = [
            BackgroundServer(self.peopleforce_app, self.host, self.peopleforce_port),
            BackgroundServer(self.jira_app, self.host, self.jira_port),
        ]

    @classmethod
    def from_settings(cls, settings: Settings) -> Simulators:
        return cls(
            host=settings.sandbox_host,
            peopleforce_port=settings.sandbox_peopleforce_port,
            jira_port=settings.sandbox_jira_port,
            webhook_url=str(settings.sandbox_webhook_url) if settings.sandbox_webhook_url else None,
            jira_rate_limits=settings.sandbox_jira_rate_limits,
        )

    @property
    def peopleforce_url(self) -> str:
        return self._servers[0].url + peopleforce.API_PREFIX

    @property
    def peopleforce_control_url(self) -> str:
        """Where the PeopleForce simulator takes `/_sandbox/...` commands (hire, update, ...)."""
        return self._servers[0].url

    @property
    def jira_url(self) -> str:
        return self._servers[1].url

    @property
    def peopleforce_state(self) -> peopleforce.PeopleForceState:
        return self.peopleforce_app.state.peopleforce

    @property
    def jira_state(self) -> jira.JiraState:
        return self.jira_app.state.jira

    def environment(self) -> dict[str, str]:
        """The settings that point this service at the simulators."""
        return {
            "PEOPLEFORCE_BASE_URL": self.peopleforce_url,
            "PEOPLEFORCE_API_KEY": PEOPLEFORCE_API_KEY,
            "WEBHOOK_SECRET": WEBHOOK_SECRET,
            "JIRA_BASE_URL": self.jira_url,
            "JIRA_EMAIL": JIRA_EMAIL,
            "JIRA_API_TOKEN": JIRA_API_TOKEN,
        }

    def describe(self) -> list[str]:
        lines = [
            f"PeopleForce simulator: {self.peopleforce_url}  (X-API-KEY: {PEOPLEFORCE_API_KEY}; "
            f"{len(self.people)} people; control: {self._servers[0].url}/_sandbox/employees)",
            f"Jira simulator:        {self.jira_url}  (basic auth {JIRA_EMAIL} / {JIRA_API_TOKEN}; "
            f"issues: {self.jira_url}/_sandbox/issues)",
            f"Webhooks go to:        {mask_url(self.webhook_url) if self.webhook_url else '(nowhere: set SANDBOX_WEBHOOK_URL)'}",
            "Point pf-jira-sync at them (sandbox credentials, not secrets):",
        ]
        lines += [f"  export {name}={value}" for name, value in self.environment().items()]
        return lines

    def alive(self) -> bool:
        return all(server.alive() for server in self._servers)

    def start(self) -> Simulators:
        started: list[BackgroundServer] = []
        try:
            for server in self._servers:
                server.start()
                started.append(server)
        except BaseException:
            for server in started:
                server.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.stop()

    def __enter__(self) -> Simulators:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
