# The two commands of the README: `make run` and `make test`.
# Both bootstrap uv (into .tools/ when it is not on PATH) and sync the locked environment.

UV ?= $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
PYTHON ?= python3
PACKAGES = core flows tasks webhook_gateway deployments sandbox cli

.PHONY: run test sync lint fix

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/python -m pip install --quiet --disable-pip-version-check uv

# Bytecode is compiled once here: every flow run is a fresh interpreter (see DESIGN), and where
# PYTHONDONTWRITEBYTECODE is set each one would otherwise compile prefect and this project
# again (about 2 CPU-s per run on 2 cores).
sync: $(if $(filter .tools/bin/uv,$(UV)),.tools/bin/uv)
	$(UV) sync --locked --quiet --compile-bytecode
	$(UV) run --locked python -m compileall -q $(PACKAGES)

run: sync
	$(UV) run --locked pf-jira-sync up --sandbox

lint: sync
	$(UV) run --locked ruff check .
	$(UV) run --locked ruff format --check .
	$(UV) run --locked ty check
	$(UV) run --locked lint-imports --no-cache

test: lint
	$(UV) run --locked pytest

fix: sync
	$(UV) run --locked ruff check --fix .
	$(UV) run --locked ruff format .
