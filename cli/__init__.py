"""The top floor: the operator's `pf-jira-sync` command, which composes the whole service.

Nothing in the project imports this package; it may import any of them. Each module beside
`app` adds its commands to the one Typer app when imported here.
"""

from cli import (  # noqa: F401 (they add commands)
    breaker,
    doctor,
    inbox,
    reconcile,
    running,
    sandbox,
    why,
)
from cli.app import app

__all__ = ["app"]
