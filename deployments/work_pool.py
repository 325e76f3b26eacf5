"""Every deployment on a Prefect work pool, for process workers on as many hosts as needed.

The same deployments as `deployments.serve` (the specs in `deployments.definitions`, same
names, so the gateway's dispatcher finds `sync-employees/webhook` either way), registered on a
`process` work pool instead of served. Their entrypoints are module paths
(`flows.sync.sync_employees`): a worker imports the flow from the installed package, so any
host with this package installed (the Docker image, or a `uv sync` checkout) can run any run,
and no code storage or image build is involved.

Each worker runs its flow runs as processes that inherit its environment: the settings of this
service (DATABASE_URL on PostgreSQL, the API credentials, RULES_FILE) must be in that
environment. `pf-jira-sync worker` starts a worker that way (see cli/running.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

from prefect import get_client
from prefect.client.schemas.actions import WorkPoolCreate, WorkPoolUpdate
from prefect.client.schemas.objects import WorkPool
from prefect.deployments.runner import EntrypointType, RunnerDeployment
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.workers.process import ProcessWorker

from core.settings import Settings
from deployments.alerts import install_crash_detection
from deployments.definitions import ALL, DeploymentSpec

WORKER_TYPE = "process"
# The flow-run process, started directly: without a command, Prefect 3.9's process worker
# first starts a workspace supervisor (another interpreter importing Prefect, about 2.5 CPU-s)
# to look for a project to `uv run`, which an installed package does not need. `python` is the
# interpreter on the worker's PATH (`pf-jira-sync worker` puts its own first).
ENGINE_COMMAND = "python -m prefect.engine"


class WorkPoolError(Exception):
    """The work pool cannot take these deployments; the text says why."""


@dataclass(frozen=True)
class Deployed:
    full_name: str
    id: UUID


def work_pool_deployment(
    spec: DeploymentSpec, work_pool: str, settings: Settings
) -> RunnerDeployment:
    """The spec as a deployment of `work_pool` (the same options as when it is served), its
    flow imported by module path."""
    return RunnerDeployment.from_flow(
        spec.flow,
        **spec.options(settings),
        work_pool_name=work_pool,
        job_variables={"command": ENGINE_COMMAND},
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


async def ensure_work_pool(name: str, *, concurrency_limit: int | None = None) -> WorkPool:
    """The process work pool `name`, created when missing (another host may create it at the
    same moment: then it is read). A given `concurrency_limit` (runs at once over all workers)
    is applied to an existing pool too; None leaves the pool's limit as it is."""
    async with get_client() as client:
        try:
            pool = await client.read_work_pool(name)
        except ObjectNotFound:
            try:
                return await client.create_work_pool(
                    WorkPoolCreate(
                        name=name,
                        type=WORKER_TYPE,
                        description="pf-jira-sync: process workers running the sync flows",
                        base_job_template=ProcessWorker.get_default_base_job_template(),
                        concurrency_limit=concurrency_limit,
                    )
                )
            except ObjectAlreadyExists:
                pool = await client.read_work_pool(name)
        if pool.type != WORKER_TYPE:
            raise WorkPoolError(
                f"work pool {name!r} is a {pool.type!r} pool; these deployments need a "
                f"{WORKER_TYPE!r} pool: choose another name"
            )
        if concurrency_limit is not None and pool.concurrency_limit != concurrency_limit:
            await client.update_work_pool(name, WorkPoolUpdate(concurrency_limit=concurrency_limit))
            pool = await client.read_work_pool(name)
        return pool


async def deploy_all(
    work_pool: str, settings: Settings, *, concurrency_limit: int | None = None
) -> list[Deployed]:
    """Create the work pool if needed and register every deployment on it (an update when a
    deployment of that name exists, e.g. one the one-host stack served before)."""
    await ensure_work_pool(work_pool, concurrency_limit=concurrency_limit)
    # Workers' runs heartbeat (`pf-jira-sync worker` sets FLOW_HEARTBEAT_SECONDS): a run whose
    # process dies with its worker is marked Crashed, and its events are worked again.
    await install_crash_detection(timedelta(seconds=settings.flow_silent_crash_seconds))
    deployed = []
    for spec in ALL:
        deployment_id = await work_pool_deployment(spec, work_pool, settings).aapply()
        deployed.append(Deployed(spec.full_name, deployment_id))
    return deployed
