"""The FastAPI app: both APIs, the health and metrics routes, authentication, body limit, request log,
and one error handler; the models load when the app starts (its lifespan) and are closed when it stops.

Loading at startup rather than in `create_app` keeps the app a plain, picklable value, which Ray Serve
ships to each replica (sdrun.serve.ray_deploy).
"""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse

from sdrun.errors import SettingsError
from sdrun.pipeline import Pipeline
from sdrun.serve import a1111_api, openai_api
from sdrun.serve.auth import bearer_key
from sdrun.serve.body_limit import BodyLimit
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
        app.state.models = load_models(config, metrics)
        try:
            yield
        finally:
            app.state.models.stop()

    app = FastAPI(title="sdrun", summary="Stable Diffusion on onnxruntime", lifespan=lifespan)
    install_error_handler(app)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.add_middleware(RequestLog, metrics=metrics)  # outermost: it sees every answer, 413s included
    authorized = [Depends(bearer_key(config.api_key))]
    app.include_router(openai_api.router, dependencies=authorized)
    app.include_router(a1111_api.router, dependencies=authorized)

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
