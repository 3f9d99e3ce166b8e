"""What the routes of both APIs share: the served models, and running one job for a request."""

from fastapi import Request
from starlette.concurrency import run_in_threadpool

from sdrun.results import GeneratedImage
from sdrun.serve.jobs import Models, finished
from sdrun.settings import GenerationSettings


def served_models(request: Request) -> Models:
    return request.app.state.models


async def run_job(
    request: Request, models: Models, model: str | None, settings: GenerationSettings
) -> tuple[list[GeneratedImage], bool]:
    """Queue the generation (QueueFullError when the model's queue is full) and wait for its images, and
    whether `interrupt` stopped it; ClientDisconnectedError (the job cancelled) if the client leaves."""
    worker = models.get(model)
    # Settings the model cannot run are refused now (400), not when the job's turn comes; in a worker
    # thread, as it reads the init image's header (its EXIF orientation) and the loop serves the others.
    # The job runs this very request (its seed drawn once).
    prepared = await run_in_threadpool(worker.pipeline.prepare, settings)
    request.state.job = (
        f"model={worker.name} size={prepared.width}x{prepared.height} steps={prepared.steps} "
        f"images={prepared.num_images}"
    )
    job = worker.submit(prepared)
    images = await finished(job, request.is_disconnected)
    return images, job.interrupted
