"""The HTTP application: built from settings, with the scheduler running for its lifetime."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from bulkinfer import __version__
from bulkinfer.api import errors
from bulkinfer.api.access_log import AccessLog
from bulkinfer.api.anthropic.batches import router as message_batches_router
from bulkinfer.api.anthropic.messages import router as anthropic_messages_router
from bulkinfer.api.auth import DOCS_PATHS, Authenticator, Gate, parse_keys
from bulkinfer.api.bedrock.models import router as bedrock_models_router
from bulkinfer.api.bedrock.routes import router as bedrock_router
from bulkinfer.api.health import HEALTH_PATHS, Readiness
from bulkinfer.api.health import router as health_router
from bulkinfer.api.metrics import PATH as METRICS_PATH
from bulkinfer.api.metrics import Metrics, metrics_token
from bulkinfer.api.metrics import router as metrics_router
from bulkinfer.api.models import router as models_router
from bulkinfer.api.openai.batches import router as batches_router
from bulkinfer.api.openai.files import router as files_router
from bulkinfer.api.openai.inference import router as openai_inference_router
from bulkinfer.api.runtime.routes import router as runtime_router
from bulkinfer.api.tenants import check_models, load_tenants, open_tenants, single_tenant
from bulkinfer.api.ui import routes as dashboard
from bulkinfer.api.ui.history import Throughput
from bulkinfer.api.webhooks import router as webhooks_router
from bulkinfer.domain.tenant import Tenant, Tenants, with_own_areas
from bulkinfer.engine.job import MediaSettings
from bulkinfer.errors import ConfigError, UserError
from bulkinfer.providers.catalog import Catalog
from bulkinfer.providers.extras import require_model
from bulkinfer.scheduler.pressure import Pressure
from bulkinfer.scheduler.scheduler import Scheduler
from bulkinfer.scheduler.supervisor import Loops
from bulkinfer.scheduler.watch import WATCH_TENANT, WatchFolder
from bulkinfer.scheduler.webhooks import WebhookSender
from bulkinfer.services.batch import BatchService
from bulkinfer.services.files import FileService
from bulkinfer.services.invoke import InvokeService, ModelPool
from bulkinfer.settings import ServerSettings
from bulkinfer.storage.uris import LocalBuckets
from bulkinfer.store.batch_jobs import BatchJobStore
from bulkinfer.store.files import FileStore

FILE_EXPIRY_EVERY_S = 60.0
"""How often files whose time is up are looked for (and deleted)."""


class CountRequests:
    """ASGI middleware: tells `Pressure` when each HTTP request starts and ends, so background work can
    give way to a burst (a request stops counting after a few seconds, whatever the client does)."""

    def __init__(self, app: ASGIApp, pressure: Pressure) -> None:
        self._app = app
        self._pressure = pressure

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        ticket = self._pressure.enter()
        try:
            await self._app(scope, receive, send)
        finally:
            self._pressure.leave(ticket)


def tenants_of(settings: ServerSettings) -> Tenants:
    """Who may call: the tenants file, the one tenant of ``--access-keys``, or anyone (development)."""
    single = settings.access_keys is not None or settings.api_keys_env is not None
    given = [settings.insecure_dev, settings.tenants is not None, single]
    if sum(given) != 1:
        raise ConfigError(
            "give exactly one of --tenants FILE, --access-keys KEY:SECRET,... (and/or --api-keys-env VAR) "
            "or --insecure-dev"
        )
    if settings.insecure_dev:
        return open_tenants()
    if settings.tenants is not None:
        return with_own_areas(load_tenants(settings.tenants), settings.files_bucket)
    try:
        return single_tenant(parse_keys(settings.access_keys), settings.api_keys_env)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def create_app(settings: ServerSettings, tenants: Tenants | None = None) -> FastAPI:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    tenants = tenants or tenants_of(settings)
    catalog = Catalog.load(settings.models)
    check_models(tenants, (spec.name for spec in catalog))
    if settings.watch_model is not None:  # its jobs could never run: said now, not by each job
        try:
            require_model(catalog.get(settings.watch_model))
        except UserError as exc:
            raise ConfigError(f"--watch-model: {exc}") from None
    webhooks = settings.webhook_config()
    store = BatchJobStore(settings.store_url, webhooks=webhooks)
    # jobs from before tenants belong to the access key that made them: they join its tenant now
    store.rename_tenants({key: name for key, (name, _) in tenants.keys.items()})
    pressure = Pressure()
    token = metrics_token(settings)
    files = FileService.of_server(
        FileStore(settings.store_url),
        settings.data_dir,
        settings.s3_endpoint_url,
        settings.files_bucket,
        settings.max_file_bytes,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler = Scheduler(store, settings, catalog, pressure=pressure, tenants=tenants)
        pool = ModelPool(catalog)
        app.state.metrics = Metrics.of_server(settings, token, store, scheduler, catalog)
        provider_jobs = app.state.metrics.state.provider_jobs()
        app.state.batch = BatchService(store, scheduler, catalog, webhooks, provider_jobs)
        media = MediaSettings.of_service(settings.fetch_allow, settings.data_dir, settings.s3_endpoint_url)
        media = replace(media, tally=scheduler.media_tally)  # on-demand calls' images count too
        app.state.invoke = InvokeService(catalog, pool, media)
        app.state.files = files
        tasks = [asyncio.create_task(scheduler.run())]
        loops = Loops()
        loops.start("file-expiry", lambda: files.expiry_step(FILE_EXPIRY_EVERY_S))
        sender = WebhookSender(store, webhooks) if webhooks is not None else None
        if sender is not None:
            loops.start("webhooks", sender.step)
        app.state.ui_store, app.state.ui_limits = store, scheduler.limits
        loops.start("dashboard-throughput", app.state.ui_history.step_of(scheduler.running_counts))
        if settings.watch and settings.watch_model:
            owner = watch_tenant(tenants, settings)
            watch = WatchFolder(
                settings.watch, settings.watch_model, LocalBuckets(settings.data_dir), app.state.batch, owner
            )
            tasks.append(asyncio.create_task(watch.run(settings.watch_every_s)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await loops.stop()
            if sender is not None:
                await sender.close()
            await scheduler.close()
            await pool.close()
            app.state.metrics.close()
            app.state.readiness.close()
            store.close()
            files.close()

    docs = {} if settings.docs else {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(title="bulkinfer", version=__version__, lifespan=lifespan, **docs)  # type: ignore[arg-type]
    app.state.settings = settings
    app.state.tenants = tenants
    app.state.webhooks = webhooks
    app.state.readiness = Readiness(store.revision)
    app.state.ui_history = Throughput()
    errors.install(app)
    app.add_middleware(
        Gate,
        auth=Authenticator(tenants, settings.region),
        max_body=settings.max_request_bytes,
        max_buffered=max(settings.max_buffered_bytes or 0, 2 * settings.max_request_bytes),
        respond=errors.refusal,
        public=(DOCS_PATHS if settings.docs else frozenset()) | HEALTH_PATHS | {METRICS_PATH},
        streamed={("POST", "/v1/files"): settings.max_file_bytes + 2**20},  # (an upload's form fields)
        own_auth=(dashboard.PREFIX,),
    )
    app.add_middleware(CountRequests, pressure=pressure)
    app.add_middleware(AccessLog)  # (the last added runs first: it sees every request, refused or not)
    app.include_router(health_router)
    app.include_router(bedrock_router)
    app.include_router(runtime_router)
    app.include_router(files_router)
    app.include_router(batches_router)
    app.include_router(message_batches_router)
    app.include_router(bedrock_models_router)
    app.include_router(openai_inference_router)
    app.include_router(anthropic_messages_router)
    app.include_router(models_router)
    app.include_router(metrics_router)
    app.include_router(webhooks_router)
    dashboard.install(app)
    return app


def watch_tenant(tenants: Tenants, settings: ServerSettings) -> Tenant:
    """The tenant the watch folder submits as; it must be granted the folder (to read its inbox and
    write its outputs)."""
    if tenants.open:
        name = settings.watch_tenant or WATCH_TENANT
    elif settings.watch_tenant is not None:
        name = settings.watch_tenant
    elif len(tenants.by_name) == 1:
        (name,) = tenants.by_name
    else:
        raise ConfigError("--watch with several tenants needs --watch-tenant NAME: whose jobs are they?")
    if not tenants.open and name not in tenants.by_name:
        raise ConfigError(
            f"--watch-tenant {name!r} is not a tenant; known: {', '.join(sorted(tenants.by_name))}"
        )
    tenant = tenants.get(name)
    tenant.check_write(f"{(settings.watch or '').rstrip('/')}/", "--watch")
    tenant.check_model(settings.watch_model or "")
    return tenant
