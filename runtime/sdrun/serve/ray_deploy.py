"""The same app as a Ray Serve deployment: N replicas, each loading the models and running its own
queues, with Ray's proxy routing requests among them (and queueing them, up to `max_queued_requests`,
before answering 503). On a Ray cluster of several machines the replicas spread over its nodes; README
"Serving" says how to start one, and how on KubeRay.
"""

import os
import time
from pathlib import Path

from fastapi import FastAPI
from ray import serve

from sdrun.serve.app import create_app
from sdrun.serve.config import DEFAULT_QUEUE_DEPTH, ServeConfig

APP_NAME = "sdrun"
# Requests Ray's router holds for the deployment beyond those its replicas take, before answering 503.
MAX_QUEUED_REQUESTS = 64


@serve.deployment
@serve.ingress()
class SdrunReplica:
    """One replica: the app of sdrun.serve.app, built on the replica (the models load there)."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_app(self.config)


def deployment(config: ServeConfig, replicas: int) -> serve.Application:
    """The application to `serve.run`: each replica takes at most `queue_depth` requests at a time (the one
    it runs among them, so its own queue always has room: Ray, not the replica, holds the rest and routes
    them to whichever replica frees first)."""
    return SdrunReplica.options(
        num_replicas=replicas,
        max_ongoing_requests=max(1, config.queue_depth),
        max_queued_requests=MAX_QUEUED_REQUESTS,
    ).bind(config)


def app_from_environment(args: dict[str, str]) -> serve.Application:
    """A Ray Serve application builder, for `serve run` and KubeRay's RayService (their `import_path`):

        serve run sdrun.serve.ray_deploy:app_from_environment folders=/models/a,/models/b replicas=2

    `folders` (comma-separated) defaults to $SDRUN_MODEL_DIRS, `queue` to 4, `replicas` to 1, and the API
    key comes from $SDRUN_API_KEY (kept out of the config file); every path must exist on every node.
    `allowed_hosts` (comma-separated, or $SDRUN_ALLOWED_HOSTS) defaults to '*': behind Ray's proxy on a
    cluster, clients use the cluster's names, which only its operator knows."""
    folders = args.get("folders") or os.environ.get("SDRUN_MODEL_DIRS", "")
    config = ServeConfig(
        folders=tuple(Path(folder) for folder in folders.split(",") if folder),
        queue_depth=int(args.get("queue", DEFAULT_QUEUE_DEPTH)),
        api_key=os.environ.get("SDRUN_API_KEY"),
        provider=args.get("provider", "auto"),
        allowed_hosts=tuple(
            (args.get("allowed_hosts") or os.environ.get("SDRUN_ALLOWED_HOSTS", "*")).split(",")
        ),
    )
    return deployment(config, int(args.get("replicas", 1)))


def start(config: ServeConfig, replicas: int, host: str, port: int) -> None:
    """Start Serve on the Ray cluster this process joins (a local one unless RAY_ADDRESS says otherwise)
    and deploy the app; returns once every replica is up."""
    serve.start(http_options={"host": host, "port": port})
    serve.run(deployment(config, replicas), name=APP_NAME, route_prefix="/")


def serve_forever(config: ServeConfig, replicas: int, host: str, port: int) -> None:
    start(config, replicas, host, port)
    try:
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()
