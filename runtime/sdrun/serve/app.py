"""The FastAPI app: both APIs, the health and metrics routes, the API docs, authentication, the Host and
cross-site checks, CORS (off unless origins are given), body limit, request log, and one error handler;
the models load when the app starts (its lifespan) unless they were loaded before (sdrun.serve.server
loads them before it listens, so that a broken folder is a one-line error), and are closed when it stops.

Loading at startup rather than in `create_app` keeps the app a plain, picklable value, which Ray Serve
ships to each replica (sdrun.serve.ray_deploy).
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse

from sdrun.errors import SettingsError
from sdrun.pipeline import Pipeline
from sdrun.serve import a1111_api, openai_api
from sdrun.serve.auth import bearer_key
from sdrun.serve.body_limit import BodyLimit
from sdrun.serve.browser_guard import BrowserGuard
from sdrun.serve.config import ServeConfig
from sdrun.serve.errors import install_error_handler
from sdrun.serve.jobs import Models, ModelWorker
from sdrun.serve.metrics import Metrics, RequestLog

log = logging.getLogger("sdrun.serve")


def load_models(config: ServeConfig, metrics: Metrics) -> Models:
    """Each folder's pipeline and worker; two folders of one name would be one model to clients."""
    workers: list[ModelWorker] = []
    try:
        for folder in config.folders:
            pipeline = Pipeline.load(
                folder,
                config.provider,
                verify_checksums=config.verify_checksums,
                low_memory=config.low_memory,
                limits=config.limits,
            )
            name = pipeline.folder.name
            if any(worker.name == name for worker in workers):
                pipeline.close()
                raise SettingsError(f"two model folders are named {name!r}: serve folders of different names")
            workers.append(ModelWorker(name, pipeline, config.queue_depth, metrics.count_images))
            log.info("model %s from %s on %s", name, pipeline.folder.path, pipeline.provider)
    except BaseException:
        for worker in workers:
            worker.stop()
        raise
    return Models(workers)


def create_app(config: ServeConfig) -> FastAPI:
    if not config.folders:
        raise SettingsError("give at least one model folder to serve")
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not hasattr(app.state, "models"):
            app.state.models = load_models(config, metrics)
        try:
            yield
        finally:
            app.state.models.stop()

    # FastAPI's own docs routes would answer without the key: ours below take it like every route.
    app = FastAPI(
        title="sdrun",
        summary="Stable Diffusion on onnxruntime",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.metrics = metrics
    install_error_handler(app)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes, timeout=config.body_timeout_seconds)
    app.add_middleware(BrowserGuard, allowed_hosts=config.allowed_hosts, cors_origins=config.cors_origins)
    if config.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(RequestLog, metrics=metrics)  # outermost: it sees every answer, 413s included
    authorized = [Depends(bearer_key(config.api_key))]
    app.include_router(openai_api.router, dependencies=authorized)
    app.include_router(a1111_api.router, dependencies=authorized)

    @app.get("/openapi.json", dependencies=authorized, include_in_schema=False)
    async def openapi() -> JSONResponse:
        return JSONResponse(app.openapi())

    @app.get("/docs", dependencies=authorized, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url="/openapi.json", title="sdrun")

    @app.get("/redoc", dependencies=authorized, include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url="/openapi.json", title="sdrun")

    @app.get("/health")
    async def health(request: Request) -> dict:
        """For load balancers: no key needed, and no model named."""
        return {"status": "ok", "jobs": request.app.state.models.job_count()}

    @app.get("/metrics", dependencies=authorized, response_class=PlainTextResponse)
    async def prometheus(request: Request) -> str:
        models: Models = request.app.state.models
        depths = {
            name: worker.waiting + (worker.running is not None) for name, worker in models.workers.items()
        }
        return metrics.render(depths)

    return app
