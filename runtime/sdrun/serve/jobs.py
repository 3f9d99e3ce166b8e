"""One bounded queue per model, and the thread that runs its jobs one at a time.

A request becomes a `Job` (the request `Pipeline.prepare` made of its settings); `ModelWorker.submit`
queues it or, when `queue_depth` jobs already wait, refuses it at once with `QueueFullError` (HTTP 429),
so that a burst never hangs connections. The worker runs each job with a progress hook that records
where it is
(for A1111's progress route) and the job's StopSignal (sdrun.stopping): a client that disconnects cancels
its job before the next UNet pass, VAE pass or tile (nothing is decoded for it), and `interrupt()` ends the
sampling before the next UNet pass and answers with the images made so far.

When the server stops, `refuse_waiting` answers the waiting jobs (and any new one) with
ServerStoppingError, and `abandon_running` answers the running one so too and cancels it.
"""

import asyncio
import concurrent.futures
import logging
import math
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from sdrun.errors import SdrunError, SettingsError
from sdrun.pipeline import Pipeline
from sdrun.progress import Progress
from sdrun.request import GenerationRequest
from sdrun.results import GeneratedImage
from sdrun.stopping import StopSignal

log = logging.getLogger("sdrun.serve")
# How often a waiting request looks whether its client is still there.
DISCONNECT_POLL_SECONDS = 0.2
# Retry-After before any job has been timed.
FIRST_JOB_SECONDS_GUESS = 5.0
# How long `stop` waits for the thread to leave a step it is in; a step longer than that (a huge image)
# is left to end with the process, and its pipeline is not closed under it.
STOP_JOIN_SECONDS = 5.0


class QueueFullError(Exception):
    """The model's queue is full; `retry_after` estimates the seconds until a place frees."""

    def __init__(self, model: str, retry_after: int) -> None:
        super().__init__(f"the queue of model {model!r} is full: retry in about {retry_after} s")
        self.retry_after = retry_after


class ServerStoppingError(SdrunError):
    """The server shut down before the job ran or finished."""

    def __init__(self) -> None:
        super().__init__("the server is shutting down: try again later")


class ClientDisconnectedError(Exception):
    """The client went away while its job waited or ran; the job was cancelled."""


@dataclass
class Job:
    """One request's generation: its prepared request, its result, and where it is."""

    request: GenerationRequest
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    stop: StopSignal = field(default_factory=StopSignal)
    progress: Progress | None = None
    started: float | None = None

    @property
    def interrupted(self) -> bool:
        return self.stop.interrupted.is_set()

    def answer(self, images: list[GeneratedImage] | None = None, error: BaseException | None = None) -> None:
        """Set the job's result or error, unless the server already answered it (`abandon_running`)."""
        try:
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(images)
        except concurrent.futures.InvalidStateError:
            pass

    def cancel(self) -> None:
        self.stop.cancel()

    def on_progress(self, progress: Progress) -> None:
        """The pipeline's progress hook: remember where the job is (the StopSignal stops it)."""
        self.progress = progress


class ModelWorker:
    """A loaded pipeline, its queue of at most `depth` waiting jobs, and the thread that runs them."""

    def __init__(
        self, name: str, pipeline: Pipeline, depth: int, on_done: Callable[[int, float], None] | None = None
    ) -> None:
        if depth < 1:  # a queue.Queue of size 0 would be unbounded
            raise ValueError(f"the queue depth must be at least 1, not {depth}")
        self.name = name
        self.pipeline = pipeline
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=depth)
        self._on_done = on_done
        self.running: Job | None = None
        self._seconds_per_job: float | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"sdrun-serve-{name}", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def submit(self, request: GenerationRequest) -> Job:
        if self._stopping:
            raise ServerStoppingError
        job = Job(request)
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFullError(self.name, self._retry_after()) from None
        return job

    def interrupt(self) -> None:
        """Stop the running job before its next UNet pass; it answers with the images made so far."""
        job = self.running
        if job is not None:
            job.stop.interrupt()

    def refuse_waiting(self) -> None:
        """Answer the waiting jobs, and any submitted from now on, with ServerStoppingError."""
        self._stopping = True
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.answer(error=ServerStoppingError())

    def abandon_running(self) -> None:
        """Answer the running job with ServerStoppingError now; it stops at its next step."""
        job = self.running
        if job is not None:
            job.cancel()
            job.answer(error=ServerStoppingError())

    def stop(self) -> None:
        """Refuse the waiting jobs, stop the running one, and end the thread."""
        self.refuse_waiting()
        self.interrupt()
        self._queue.put(None)
        self._thread.join(STOP_JOIN_SECONDS)
        if self._thread.is_alive():
            log.warning(
                "model %s: its running step did not end within %g s; not waiting",
                self.name,
                STOP_JOIN_SECONDS,
            )
            return
        self.pipeline.close()

    def _retry_after(self) -> int:
        per_job = self._seconds_per_job or FIRST_JOB_SECONDS_GUESS
        return max(1, math.ceil(per_job * (self.waiting + 1)))

    def _run(self) -> None:
        while (job := self._queue.get()) is not None:
            if job.stop.cancelled.is_set() or not job.future.set_running_or_notify_cancel():
                job.future.cancel()
                continue
            self.running, job.started = job, time.perf_counter()
            try:
                images = list(
                    self.pipeline.generate_each(job.request, progress=job.on_progress, stop=job.stop)
                )
            except Exception as error:  # every failure goes back to the request, which maps it to a status
                job.answer(error=error)
            else:
                seconds = time.perf_counter() - job.started
                self._seconds_per_job = seconds
                if self._on_done is not None:
                    self._on_done(len(images), seconds)
                job.answer(images)
            finally:
                self.running = None


async def finished(job: Job, disconnected: Callable[[], Awaitable[bool]]) -> list[GeneratedImage]:
    """The job's images, once made; cancels the job and raises ClientDisconnectedError if the client
    goes away first."""
    future = asyncio.wrap_future(job.future)
    while True:
        done, _ = await asyncio.wait({future}, timeout=DISCONNECT_POLL_SECONDS)
        if done:
            return future.result()
        if await disconnected():
            job.cancel()
            future.cancel()  # nobody will read the job's GenerationCancelled
            raise ClientDisconnectedError


class Models:
    """The served models by name, each with its worker; `current` is the one a request naming none gets
    (A1111's `sd_model_checkpoint`)."""

    def __init__(self, workers: Iterable[ModelWorker]) -> None:
        self.workers = {worker.name: worker for worker in workers}
        self.current = next(iter(self.workers))

    def get(self, name: str | None) -> ModelWorker:
        if name is None:
            return self.workers[self.current]
        worker = self.workers.get(name)
        if worker is None:
            raise SettingsError(
                f"model {name[:100]!r} is not served here: choose one of {', '.join(self.workers)}"
            )
        return worker

    def select(self, name: str) -> None:
        self.current = self.get(name).name

    def job_count(self) -> int:
        return sum(worker.waiting + (worker.running is not None) for worker in self.workers.values())

    def interrupt(self) -> None:
        for worker in self.workers.values():
            worker.interrupt()

    def refuse_waiting(self) -> None:
        for worker in self.workers.values():
            worker.refuse_waiting()

    def abandon_running(self) -> None:
        for worker in self.workers.values():
            worker.abandon_running()

    def stop(self) -> None:
        for worker in self.workers.values():
            worker.stop()
