"""`sdrun serve`, the CLI adapter: a real process serving on loopback, and one-line errors when the
server's extra is missing or the options disagree."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from serve_helpers import free_port

from sdrun.cli import main

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")


def test_the_command_serves_until_stopped(served_folder: Path) -> None:
    port = free_port()
    command = [sys.executable, "-m", "sdrun", "serve", str(served_folder), "--port", str(port)]
    command += ["--provider", "cpu", "--api-key", "k3y", "--queue", "1"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"{url}/health").json()["status"] == "ok"
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        models = httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer k3y"}).json()
        assert [model["id"] for model in models["data"]] == [served_folder.name]
        assert httpx.get(f"{url}/v1/models").status_code == 401
    finally:
        server.terminate()
        log, _ = server.communicate(timeout=30)
    # One line per request: route, status, seconds.
    assert "GET /v1/models 200" in log and "GET /v1/models 401" in log, log


def test_a_missing_extra_is_one_line_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    for module in [name for name in sys.modules if name.startswith("sdrun.serve")]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, "fastapi", None)  # import fastapi -> ModuleNotFoundError
    result = CliRunner().invoke(main, ["serve", "--port", "1"])
    assert result.exit_code == 1
    assert (
        result.output.strip()
        == "Error: the server needs fastapi, which is not installed: pip install '.[serve]'"
    )


def test_replicas_need_ray() -> None:
    result = CliRunner().invoke(main, ["serve", "--replicas", "2"])
    assert result.exit_code == 2 and "--replicas needs --ray" in result.output
