"""`python -m cli`: the same as the `pf-jira-sync` command."""

from cli import app

app()
