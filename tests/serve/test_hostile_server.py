"""The server against hostile clients and a hostile web (issue 26, items 3, 4, 5 and 14): DNS rebinding
and cross-site requests, the API docs behind the key, slow clients timed out and connections capped, and
starting and stopping with one-line errors and 503s. Every server here listens on 127.0.0.1 only, and the
slow-client bounds are set small, so that the whole file takes seconds."""

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import CliRunner
from serve_helpers import PROMPT, SIDE, free_port, init_image, live_server, png_bytes

from sdrun.cli import main
from sdrun.serve.config import ServeConfig

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from sdrun.serve.app import create_app  # noqa: E402
from sdrun.serve.browser_guard import default_allowed_hosts, is_loopback  # noqa: E402

OWN = "http://127.0.0.1:7860"  # what a browser on the server's own pages sends as Origin
APP_ORIGIN = "https://app.example"
FOREIGN = {"Origin": "https://attacker.example"}
STARTUP_SECONDS = 20
# Slow-client bounds for the live server below: small, so that each test waits about a second.
HEADER_TIMEOUT, BODY_TIMEOUT, MAX_CONNECTIONS = 0.5, 0.5, 8


def default_config(folder: Path, **options: object) -> ServeConfig:
    """The server's own defaults (not the test helpers' extra `testserver` name)."""
    return ServeConfig(folders=(folder,), provider="cpu", **options)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def guarded(served_folder: Path) -> Iterator[TestClient]:
    """A server with the defaults, reached as http://127.0.0.1:7860 (its Host: an address)."""
    with TestClient(create_app(default_config(served_folder)), base_url=OWN) as test_client:
        yield test_client


# --- item 3: DNS rebinding ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"), [("GET", "/sdapi/v1/sd-models"), ("POST", "/sdapi/v1/options"), ("GET", "/v1/models")]
)
def test_a_host_name_not_allowed_is_refused(guarded: TestClient, method: str, path: str) -> None:
    answer = guarded.request(method, path, headers={"Host": "attacker.example:7860"}, json={})
    assert answer.status_code == 400
    message = answer.json()["error"]["message"] if path.startswith("/v1/") else answer.json()["detail"]
    assert "'attacker.example'" in message and "--allowed-hosts" in message


@pytest.mark.parametrize("host", ["127.0.0.1:7860", "localhost:7860", "LOCALHOST.", "[::1]:7860", "10.1.2.3"])
def test_addresses_and_localhost_pass(guarded: TestClient, host: str) -> None:
    assert guarded.get("/sdapi/v1/options", headers={"Host": host}).status_code == 200


def test_allowed_host_names_and_any(served_folder: Path) -> None:
    config = default_config(served_folder, allowed_hosts=("localhost", "sd.lan"))
    with TestClient(create_app(config), base_url="http://sd.lan:7860") as named:
        assert named.get("/v1/models").status_code == 200
        assert named.get("/v1/models", headers={"Host": "other.lan"}).status_code == 400
    with TestClient(create_app(default_config(served_folder, allowed_hosts=("*",)))) as anything:
        assert anything.get("/v1/models", headers={"Host": "attacker.example"}).status_code == 200


def test_default_allowed_hosts_follow_the_bound_address() -> None:
    assert default_allowed_hosts("127.0.0.1") == ("localhost",)
    assert default_allowed_hosts("sd.lan") == ("localhost", "sd.lan")
    assert socket.gethostname().lower() in default_allowed_hosts("0.0.0.0")
    assert all(is_loopback(host) for host in ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
    assert not any(is_loopback(host) for host in ["0.0.0.0", "::", "192.168.1.5", "sd.lan"])


def test_sd_models_names_no_path(guarded: TestClient, served_folder: Path) -> None:
    answer = guarded.get("/sdapi/v1/sd-models")
    assert answer.status_code == 200 and str(served_folder.parent) not in answer.text
    assert [model["filename"] for model in answer.json()] == [served_folder.name]


def test_library_errors_name_no_server_path(
    guarded: TestClient, served_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder error at request time (a --low-memory server opens graphs then) names the folder only."""
    from sdrun.errors import ModelFolderError
    from sdrun.pipeline import Pipeline

    def unreadable(pipeline: Pipeline, *call: object, **settings: object) -> None:
        raise ModelFolderError(f"cannot read {served_folder.resolve()}/unet/model.onnx: Permission denied")

    monkeypatch.setattr(Pipeline, "prepare", unreadable)
    answer = guarded.post("/sdapi/v1/txt2img", json={"prompt": PROMPT})
    assert answer.status_code == 503 and str(served_folder.parent) not in answer.text
    assert answer.json()["detail"] == f"cannot read {served_folder.name}/unet/model.onnx: Permission denied"


# --- item 3: cross-site requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        FOREIGN,
        {"Origin": "null"},
        {"Origin": "http://localhost:3000"},
        {"Sec-Fetch-Site": "cross-site"},
        {"Sec-Fetch-Site": "same-site"},
    ],
)
def test_cross_site_state_changes_are_refused(guarded: TestClient, headers: dict[str, str]) -> None:
    # A page's form or fetch without preflight: text/plain to interrupt, a JSON-looking options switch.
    refused = guarded.post(
        "/sdapi/v1/interrupt", content=b"x", headers={**headers, "Content-Type": "text/plain"}
    )
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"] == "Forbidden" and "--cors-origin" in refused.json()["detail"]
    switch = guarded.post("/sdapi/v1/options", json={"sd_model_checkpoint": "x"}, headers=headers)
    assert switch.status_code == 403


def test_a_cross_site_multipart_edit_is_refused_in_openai_shape(guarded: TestClient) -> None:
    files = {"image": ("init.png", png_bytes(init_image()), "image/png")}
    data = {"prompt": PROMPT, "size": f"{SIDE}x{SIDE}", "steps": "1"}
    answer = guarded.post("/v1/images/edits", files=files, data=data, headers=FOREIGN)
    assert answer.status_code == 403 and answer.json()["error"]["type"] == "permission_error"


def test_same_origin_and_non_browser_posts_pass(guarded: TestClient) -> None:
    assert guarded.post("/sdapi/v1/interrupt").status_code == 200  # curl, SDKs: no Origin
    own = {"Origin": OWN, "Sec-Fetch-Site": "same-origin"}  # our own /docs page
    assert guarded.post("/sdapi/v1/interrupt", headers=own).status_code == 200
    # Reading is not a change, and without CORS the page cannot see the answer.
    assert (
        guarded.get("/sdapi/v1/options", headers={**FOREIGN, "Sec-Fetch-Site": "cross-site"}).status_code
        == 200
    )


def test_cors_is_off_unless_an_origin_is_named(guarded: TestClient, served_folder: Path) -> None:
    preflight = {"Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST"}
    assert (
        "access-control-allow-origin"
        not in guarded.options("/v1/images/generations", headers=preflight).headers
    )
    with TestClient(
        create_app(default_config(served_folder, cors_origins=(APP_ORIGIN,))), base_url=OWN
    ) as cors:
        allowed = cors.options("/v1/images/generations", headers=preflight)
        assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == APP_ORIGIN
        other = cors.options("/v1/images/generations", headers={**preflight, **FOREIGN})
        assert "access-control-allow-origin" not in other.headers
        page = {"Origin": APP_ORIGIN, "Sec-Fetch-Site": "cross-site"}
        answer = cors.post("/sdapi/v1/interrupt", headers=page)
        assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == APP_ORIGIN
        assert cors.post("/sdapi/v1/interrupt", headers=FOREIGN).status_code == 403


# --- item 4: the docs behind the key -----------------------------------------------------------------


def test_the_docs_need_the_key(served_folder: Path) -> None:
    with TestClient(create_app(default_config(served_folder, api_key="k3y")), base_url=OWN) as keyed:
        for path in ["/docs", "/redoc", "/openapi.json"]:
            assert keyed.get(path).status_code == 401, path
            assert keyed.get(path, headers={"Authorization": "Bearer k3y"}).status_code == 200, path
        schema = keyed.get("/openapi.json", headers={"Authorization": "Bearer k3y"}).json()
        assert "/sdapi/v1/txt2img" in schema["paths"] and "/docs" not in schema["paths"]
        assert keyed.get("/health").status_code == 200


# --- item 5: slow clients ----------------------------------------------------------------------------


@contextmanager
def bounded_server(config: ServeConfig) -> Iterator[int]:
    """The production server on 127.0.0.1 (serve_helpers.live_server); yields its port."""
    with live_server(config) as url:
        yield int(url.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def slow_port(served_folder: Path) -> Iterator[int]:
    config = default_config(
        served_folder,
        header_timeout_seconds=HEADER_TIMEOUT,
        body_timeout_seconds=BODY_TIMEOUT,
        max_connections=MAX_CONNECTIONS,
    )
    with bounded_server(config) as port:
        yield port


def _closed_within(connection: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing, or None if it was still open after `seconds`."""
    connection.settimeout(seconds)
    received = b""
    try:
        while chunk := connection.recv(65536):
            received += chunk
    except TimeoutError:
        return None
    return received


def _wait_for_free_slots(port: int) -> None:
    deadline = time.monotonic() + 5
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "/health did not answer once the slow clients were dropped"
        time.sleep(0.1)


def test_slow_headers_are_dropped(slow_port: int) -> None:
    connections = [socket.create_connection(("127.0.0.1", slow_port)) for _ in range(MAX_CONNECTIONS - 2)]
    started = time.monotonic()
    for connection in connections:
        connection.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the blank line
    try:
        assert all(_closed_within(connection, 3) == b"" for connection in connections)
        assert time.monotonic() - started < HEADER_TIMEOUT + 2
    finally:
        for connection in connections:
            connection.close()
    _wait_for_free_slots(slow_port)


def test_a_slow_body_gets_408_and_is_dropped(slow_port: int) -> None:
    with socket.create_connection(("127.0.0.1", slow_port)) as connection:
        connection.sendall(
            b"POST /sdapi/v1/txt2img HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"prompt": '
        )
        answer = _closed_within(connection, 3)
    assert answer is not None and answer.startswith(b"HTTP/1.1 408"), answer
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"] == "RequestTimeout"
    # A route that answers without reading its body: the rest may not trickle in for ever either.
    with socket.create_connection(("127.0.0.1", slow_port)) as connection:
        connection.sendall(
            b"POST /sdapi/v1/interrupt HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000\r\n\r\n"
        )
        connection.settimeout(0.1)
        received, started = b"", time.monotonic()
        while time.monotonic() - started < 3:
            try:
                connection.sendall(b"x")
                chunk = connection.recv(65536)
            except TimeoutError:
                continue
            except OSError:  # reset by the server: closed
                break
            if not chunk:
                break
            received += chunk
        else:
            pytest.fail("a body trickling in after the answer kept its connection open")
    assert received.startswith(b"HTTP/1.1 200"), received


def test_connections_beyond_the_cap_are_closed_at_once(slow_port: int) -> None:
    idle = [socket.create_connection(("127.0.0.1", slow_port)) for _ in range(2 * MAX_CONNECTIONS)]
    try:
        refused = sum(_closed_within(connection, 0.3) is not None for connection in idle)
        assert refused >= MAX_CONNECTIONS, refused
    finally:
        for connection in idle:
            connection.close()
    _wait_for_free_slots(slow_port)


# --- item 14: starting and stopping ------------------------------------------------------------------


def _serve(*arguments: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["serve", *arguments, "--provider", "cpu"])
    return result.exit_code, result.output


def test_start_errors_are_one_line(served_folder: Path, tmp_path: Path) -> None:
    port = str(free_port())
    code, output = _serve(str(tmp_path / "missing"), "--port", port)
    assert code == 1 and output.startswith("Error: model folder") and output.count("\n") == 1, output
    twin = Path(shutil.copytree(served_folder, tmp_path / "copy" / served_folder.name))
    code, output = _serve(str(served_folder), str(twin), "--port", port)
    assert code == 1 and output.startswith("Error: two model folders are named"), output
    assert output.count("\n") == 1 and "Traceback" not in output
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, output = _serve(str(served_folder), "--port", str(taken.getsockname()[1]))
    assert code == 1 and output.startswith("Error: cannot listen on 127.0.0.1:") and "--port" in output, (
        output
    )


def test_a_host_open_to_others_without_a_key_is_warned_of(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is no address of this machine: the bind fails, nothing listens.
    code, output = _serve(str(tmp_path / "missing"), "--host", "192.0.2.1", "--port", "9")
    assert output.startswith("Warning: --host 192.0.2.1 lets other machines in and there is no --api-key")
    assert code == 1 and "Error: cannot listen on 192.0.2.1:9" in output
    code, output = _serve(str(tmp_path / "missing"), "--host", "192.0.2.1", "--port", "9", "--api-key", "k")
    assert "Warning" not in output
    assert "Warning" not in _serve(str(tmp_path / "missing"), "--port", "9")[1]


GRACE = 1.0
SERVER_SCRIPT = (
    "import sys; from pathlib import Path; from sdrun.serve.config import ServeConfig; "
    "from sdrun.serve.server import serve_forever; "
    "serve_forever(ServeConfig(folders=(Path(sys.argv[1]),), provider='cpu', queue_depth=1, "
    f"shutdown_grace_seconds={GRACE}), '127.0.0.1', int(sys.argv[2]))"
)


def test_sigterm_answers_waiting_requests_503_and_exits_promptly(served_folder: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-c", SERVER_SCRIPT, str(served_folder), str(port)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    answers: dict[str, httpx.Response] = {}

    def ask(name: str, path: str, body: dict) -> None:
        answers[name] = httpx.post(f"{url}{path}", json=body, timeout=60)

    # 16 images of 150 steps: tens of seconds, so it is still running when the server is stopped.
    running = threading.Thread(
        target=ask, args=("running", "/sdapi/v1/txt2img", {"prompt": PROMPT, "steps": 150, "batch_size": 16})
    )
    waiting = threading.Thread(target=ask, args=("waiting", "/v1/images/generations", {"prompt": PROMPT}))
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        while True:
            try:
                httpx.get(f"{url}/health")
                break
            except httpx.TransportError:
                assert server.poll() is None and time.monotonic() < deadline, "the server did not start"
                time.sleep(0.1)
        running.start()
        while httpx.get(f"{url}/sdapi/v1/progress").json()["state"]["sampling_step"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        waiting.start()
        while httpx.get(f"{url}/health").json()["jobs"] < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        stopped = time.monotonic()
        server.send_signal(signal.SIGTERM)
        waiting.join(10)
        assert time.monotonic() - stopped < GRACE, "the waiting request was not answered at once"
        running.join(10)
        log, _ = server.communicate(timeout=GRACE + 10)
        exited = time.monotonic() - stopped
    finally:
        if server.poll() is None:
            server.kill()
            server.communicate()
    assert answers["waiting"].status_code == 503
    assert "shutting down" in answers["waiting"].json()["error"]["message"]
    assert answers["running"].status_code == 503
    assert answers["running"].json() == {
        "error": "ServiceUnavailable",
        "detail": "the server is shutting down: try again later",
    }
    assert server.returncode in (0, -signal.SIGTERM) and exited < GRACE + 5, (server.returncode, exited)
    assert "Traceback" not in log and "Exception" not in log, log
