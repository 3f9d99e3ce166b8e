"""What the routes of both APIs share: the served models, and running one job for a request."""

import functools
from typing import Any

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from sdrun.pipeline import GeneratedImage
from sdrun.serve.jobs import Models, finished


def served_models(request: Request) -> Models:
    return request.app.state.models


async def run_job(
    request: Request, models: Models, model: str | None, settings: dict[str, Any]
) -> tuple[list[GeneratedImage], bool]:
    """Queue the generation (QueueFullError when the model's queue is full) and wait for its images, and
    whether `interrupt` stopped it; ClientDisconnectedError (the job cancelled) if the client leaves."""
    worker = models.get(model)
    width, height = settings.get("width"), settings.get("height")
    size = f"{width}x{height}" if width and height else "default"
    request.state.job = (
        f"model={worker.name} size={size} steps={settings.get('steps') or 'default'} "
        f"images={settings.get('num_images', 1)}"
    )
    # Settings the model cannot run are refused now (400), not when the job's turn comes; in a worker
    # thread, as it reads the init image's header (its EXIF orientation) and the loop serves the others.
    await run_in_threadpool(functools.partial(worker.pipeline.prepare, **settings))
    job = worker.submit(settings)
    images = await finished(job, request.is_disconnected)
    return images, job.interrupted
