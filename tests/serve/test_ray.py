"""`sdrun serve --ray`: the same app as a Ray Serve deployment with two CPU replicas of the tiny model on a
local Ray instance, requests routed by Ray's proxy. Slow (Ray's start takes tens of seconds)."""

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import PROMPT, config_for, decode, free_port

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install '.[ray]'")
httpx = pytest.importorskip("httpx")
pytestmark = pytest.mark.slow

REPLICAS = 2


def test_two_replicas_serve_the_same_routes(
    served_folder: Path, library_pixels: Callable[..., np.ndarray]
) -> None:
    from ray import serve

    from sdrun.serve.ray_deploy import APP_NAME, start

    port = free_port()
    ray.init(num_cpus=REPLICAS, include_dashboard=False, log_to_driver=False)
    try:
        start(config_for(served_folder, queue_depth=2), REPLICAS, "127.0.0.1", port)
        replicas = serve.status().applications[APP_NAME].deployments["SdrunReplica"].replica_states
        assert replicas.get("RUNNING") == REPLICAS
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{url}/health", timeout=30).json()["status"] == "ok"

        def ask(seed: int) -> httpx.Response:
            body = {"prompt": PROMPT, "seed": seed, "steps": 4}
            return httpx.post(f"{url}/v1/images/generations", json=body, timeout=60)

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(ask, range(60, 66)))
        for seed, answer in zip(range(60, 66), answers, strict=True):
            assert answer.status_code == 200, answer.text[:300]
            np.testing.assert_array_equal(
                decode(answer.json()["data"][0]["b64_json"]), library_pixels(seed, steps=4)
            )
        samplers = httpx.get(f"{url}/sdapi/v1/samplers", timeout=30).json()
        assert "Euler a" in {sampler["name"] for sampler in samplers}
    finally:
        serve.shutdown()
        ray.shutdown()
