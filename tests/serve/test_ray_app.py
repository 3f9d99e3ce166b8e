"""`serve run sdrun.serve.ray_deploy:app_from_environment key=value ...` (Ray's command, KubeRay's
RayService): the ServeConfig and replica count it builds from its arguments and the environment, as its
docstring and README "Serving" promise. Nothing is started: where Ray is not installed, a stand-in for
`ray.serve`'s two decorators lets the module import, and `deployment` is replaced by a recorder either way."""

import importlib
import importlib.util
import sys
import types
from pathlib import Path
from typing import Any

import pytest

from sdrun.serve.config import ServeConfig

pytest.importorskip("fastapi")  # the server's extra; ray_deploy builds its app

ENVIRONMENT = ("SDRUN_MODEL_DIRS", "SDRUN_API_KEY", "SDRUN_ALLOWED_HOSTS")


def _ray_deploy(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """sdrun.serve.ray_deploy: imported as it is where Ray is installed; else executed, unregistered, over a
    stand-in `ray.serve` whose decorators return the class unchanged."""
    try:
        importlib.import_module("ray.serve")
    except ImportError:
        serve = types.ModuleType("ray.serve")
        serve.deployment = lambda cls: cls  # type: ignore[attr-defined]
        serve.ingress = lambda *args: lambda cls: cls  # type: ignore[attr-defined]
        serve.Application = object  # type: ignore[attr-defined]
        ray = types.ModuleType("ray")
        ray.serve = serve  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "ray", ray)
        monkeypatch.setitem(sys.modules, "ray.serve", serve)
        spec = importlib.util.find_spec("sdrun.serve.ray_deploy")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    return importlib.import_module("sdrun.serve.ray_deploy")


@pytest.fixture
def built(monkeypatch: pytest.MonkeyPatch) -> Any:
    """built(args, **environment) -> (config, replicas) that app_from_environment hands to `deployment`."""
    module = _ray_deploy(monkeypatch)
    made: list[tuple[ServeConfig, int]] = []
    monkeypatch.setattr(module, "deployment", lambda config, replicas: made.append((config, replicas)))

    def build(args: dict[str, str], **environment: str) -> tuple[ServeConfig, int]:
        for name in ENVIRONMENT:
            monkeypatch.delenv(name, raising=False)
        for name, value in environment.items():
            monkeypatch.setenv(name, value)
        made.clear()
        module.app_from_environment(args)
        (one,) = made
        return one

    return build


def test_the_environment_gives_folders_key_and_hosts(built) -> None:
    config, replicas = built(
        {},
        SDRUN_MODEL_DIRS="/models/a,/models/b",
        SDRUN_API_KEY="secret",
        SDRUN_ALLOWED_HOSTS="sd.example.org,sd.internal",
    )
    assert config.folders == (Path("/models/a"), Path("/models/b"))
    assert config.api_key == "secret"
    assert config.allowed_hosts == ("sd.example.org", "sd.internal")
    # The documented defaults: a queue of 4, one replica, provider auto.
    assert (config.queue_depth, replicas, config.provider) == (4, 1, "auto")


def test_arguments_win_over_the_environment_but_the_key_is_only_read_from_it(built) -> None:
    args = {
        "folders": "/mnt/x,/mnt/y,",
        "queue": "2",
        "replicas": "3",
        "provider": "cpu",
        "allowed_hosts": "a.example",
        "api_key": "in-the-config-file",
    }
    config, replicas = built(args, SDRUN_MODEL_DIRS="/models/a", SDRUN_ALLOWED_HOSTS="b.example")
    assert config.folders == (Path("/mnt/x"), Path("/mnt/y"))  # an empty name (trailing comma) is dropped
    assert (config.queue_depth, replicas, config.provider) == (2, 3, "cpu")
    assert config.allowed_hosts == ("a.example",)
    assert config.api_key is None, "the key is kept out of the config file's arguments"


def test_without_settings_any_host_name_is_let_through(built) -> None:
    """Behind Ray's proxy on a cluster, the names clients use are the operator's to know."""
    config, _ = built({"folders": "/models/a"})
    assert config.allowed_hosts == ("*",) and config.api_key is None
