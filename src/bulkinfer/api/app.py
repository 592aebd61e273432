"""The HTTP application: built from settings, with the scheduler running for its lifetime."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from bulkinfer import __version__
from bulkinfer.api import errors
from bulkinfer.api.auth import Authenticator, parse_keys
from bulkinfer.api.bedrock.routes import router as bedrock_router
from bulkinfer.api.runtime.routes import router as runtime_router
from bulkinfer.providers.catalog import Catalog
from bulkinfer.scheduler.pressure import Pressure
from bulkinfer.scheduler.scheduler import Scheduler
from bulkinfer.scheduler.watch import WatchFolder
from bulkinfer.services.batch import BatchService
from bulkinfer.services.invoke import InvokeService, ModelPool
from bulkinfer.settings import ServerSettings
from bulkinfer.storage.uris import LocalBuckets
from bulkinfer.store.batch_jobs import BatchJobStore


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


def create_app(settings: ServerSettings) -> FastAPI:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    catalog = Catalog.load(settings.models)
    store = BatchJobStore(settings.store_url)
    pressure = Pressure()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scheduler = Scheduler(store, settings, catalog, pressure=pressure)
        pool = ModelPool(catalog)
        app.state.batch = BatchService(store, scheduler, catalog)
        app.state.invoke = InvokeService(catalog, pool)
        tasks = [asyncio.create_task(scheduler.run())]
        if settings.watch and settings.watch_model:
            watch = WatchFolder(
                settings.watch, settings.watch_model, LocalBuckets(settings.data_dir), app.state.batch
            )
            tasks.append(asyncio.create_task(watch.run(settings.watch_every_s)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await scheduler.close()
            await pool.close()
            store.close()

    app = FastAPI(title="bulkinfer", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.auth = Authenticator(parse_keys(settings.access_keys), settings.insecure_dev, settings.region)
    errors.install(app)
    app.add_middleware(CountRequests, pressure=pressure)
    app.include_router(bedrock_router)
    app.include_router(runtime_router)
    return app
