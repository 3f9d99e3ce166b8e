"""The embedded tiny model served on loopback: through FastAPI's TestClient for most routes, and through a
live uvicorn server (serve_helpers.live_server) for real clients, bursts and disconnects."""

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from serve_helpers import PROMPT, config_for, live_server

from sdrun.folder_layout import GENERATION_DEFAULTS_KEY, MANIFEST_FILE
from sdrun.pipeline import Pipeline

# The server's tests need its extra (pip install '.[serve]'); the library's do not.
SERVER_EXTRA = "fastapi"


# Unlike SD's usual ones (sdrun.defaults), so that a request leaving them out shows whose it took.
GENERATION_DEFAULTS = {"sampler": "dpmpp_2m", "steps": 7, "guidance_scale": 3.0}


@pytest.fixture(scope="session")
def served_folder(tiny_sdexport_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny random-weight model as `sdexport build` writes it (tests/conftest.py, built once per session
    for the runtime tests too), copied with generation defaults of its own in the manifest."""
    folder = Path(
        shutil.copytree(tiny_sdexport_dir, tmp_path_factory.mktemp("served") / tiny_sdexport_dir.name)
    )
    manifest_path = folder / MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text())
    manifest[GENERATION_DEFAULTS_KEY] = GENERATION_DEFAULTS
    manifest_path.write_text(json.dumps(manifest))
    return folder


@pytest.fixture(scope="session")
def reference(served_folder: Path) -> Pipeline:
    """The library, for the pictures the server must give."""
    return Pipeline.load(served_folder, provider="cpu")


@pytest.fixture(scope="module")
def client(served_folder: Path) -> Iterator["TestClient"]:  # noqa: F821
    pytest.importorskip(SERVER_EXTRA)
    from fastapi.testclient import TestClient

    from sdrun.serve.app import create_app

    with TestClient(create_app(config_for(served_folder))) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def server_url(served_folder: Path) -> Iterator[str]:
    pytest.importorskip(SERVER_EXTRA)
    with live_server(config_for(served_folder)) as url:
        yield url


@pytest.fixture(scope="session")
def library_pixels(reference: Pipeline) -> Callable[..., np.ndarray]:
    """library_pixels(seed, **settings): the library's image for PROMPT, cached by its settings."""
    made: dict[tuple, np.ndarray] = {}

    def pixels(seed: int, **settings: object) -> np.ndarray:
        key = (seed, *sorted(settings.items()))
        if key not in made:
            made[key] = np.asarray(reference.generate(PROMPT, seed=seed, **settings).images[0])
        return made[key]

    return pixels
