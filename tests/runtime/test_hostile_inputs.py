"""sdrun against hostile model folders and inputs, each run as a user would: a separate process, a memory
limit and a time limit. Every case must end with exit status 1 or 2, one "Error: ..." line, no traceback,
and no file written; folder cases are crafted from the tiny sdexport build (the manifest resealed as an
attacker would reseal it, so that the check under test is the one that refuses)."""

import json
import resource
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
from hostile_folders import copy_folder, edit_json, reseal, unet_graph, weights_graph, write_text
from PIL import Image, PngImagePlugin

RUNTIME = Path(__file__).resolve().parents[2] / "runtime"
# A tiny-model generation takes ~150 MB resident and under 1.5 GiB of address space.
MEMORY_LIMIT = 1536 * 2**20
FAST = ["--steps", "2", "--seed", "3", "--quiet"]
SECRET = np.arange(16, dtype=np.float32) + 1000.0  # what a crafted graph would like to read


@dataclass(frozen=True)
class Run:
    status: int
    stdout: str
    stderr: str
    seconds: float


def sdrun(*args: object, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> Run:
    """`python -m sdrun ARGS` in a child limited to MEMORY_LIMIT of address space."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    command = [sys.executable, "-m", "sdrun", *(a if isinstance(a, bytes) else str(a) for a in args)]
    started = time.perf_counter()
    done = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, timeout=timeout, preexec_fn=limit, check=False
    )
    decode = lambda data: data.decode("utf-8", "replace")  # noqa: E731
    return Run(done.returncode, decode(done.stdout), decode(done.stderr), time.perf_counter() - started)


def assert_refused(run: Run, message: str, out_dir: Path) -> None:
    assert run.status in (1, 2), run
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and message in errors[0], run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert not list(out_dir.glob("*.png")) and not list(out_dir.glob(".*partial")), "something was written"


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "out").mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.bin").write_bytes(SECRET.tobytes())
    return tmp_path


@pytest.fixture
def folder(tiny_sdexport_dir: Path, work: Path) -> Path:
    return copy_folder(tiny_sdexport_dir, work / "model")


def _graph_reading(location: str) -> Callable[[Path, Path], None]:
    def craft(folder: Path, work: Path) -> None:
        onnx.save_model(weights_graph(location, SECRET), folder / "vae_encoder" / "model.onnx")
        reseal(folder)

    return craft


def _graph_reading_link(folder: Path, work: Path) -> None:
    (folder / "vae_encoder" / "weights.bin").symlink_to(work / "outside" / "secret.bin")
    _graph_reading("weights.bin")(folder, work)


def _merges_link(folder: Path, work: Path) -> None:
    (folder / "tokenizer" / "merges.txt").unlink()
    (folder / "tokenizer" / "merges.txt").symlink_to("/etc/passwd")
    reseal(folder)


def _manifest_entry(name: str) -> Callable[[Path, Path], None]:
    def craft(folder: Path, work: Path) -> None:
        manifest = json.loads((folder / "sdexport_manifest.json").read_text())
        manifest["files"][name] = {"size": 1, "sha256": "0" * 64}
        (folder / "sdexport_manifest.json").write_text(json.dumps(manifest))

    return craft


def _config(name: str, **changes: object) -> Callable[[Path, Path], None]:
    return lambda folder, work: edit_json(folder, name, **changes)


def _text(name: str, text: str) -> Callable[[Path, Path], None]:
    return lambda folder, work: write_text(folder, name, text)


def _unet(out: str) -> Callable[[Path, Path], None]:
    def craft(folder: Path, work: Path) -> None:
        (folder / "unet" / "model.onnx.data").unlink(missing_ok=True)
        onnx.save_model(unet_graph(out), folder / "unet" / "model.onnx")
        manifest = json.loads((folder / "sdexport_manifest.json").read_text())
        manifest["files"].pop("unet/model.onnx.data", None)
        (folder / "sdexport_manifest.json").write_text(json.dumps(manifest))
        reseal(folder)

    return craft


def _vocab_folder(folder: Path, work: Path) -> None:
    (folder / "tokenizer" / "vocab.json").unlink()
    (folder / "tokenizer" / "vocab.json").mkdir()


# (case, how the folder is crafted, what the error line must say)
HOSTILE_FOLDERS = [
    ("graph data via ..", _graph_reading("../../outside/secret.bin"), "leads out of the folder"),
    ("graph data by absolute path", None, "not a plain relative file name"),
    ("graph data via a symlink", _graph_reading_link, "is a link to a file outside the folder"),
    ("graph data in process memory", _graph_reading("*/_ORT_MEM_ADDR_/*"), "not a plain relative file name"),
    ("symlinked merges.txt", _merges_link, "is a link to a file outside the folder"),
    ("manifest entry via ..", _manifest_entry("../../../../etc/shadow"), "leads out of the folder"),
    ("manifest entry absolute", _manifest_entry("/etc/shadow"), "by an absolute path"),
    ("sample_size 1024", _config("unet/config.json", sample_size=1024), "sample_size=1024"),
    (
        "num_train_timesteps 1e9",
        _config("scheduler/scheduler_config.json", num_train_timesteps=10**9),
        "num_train",
    ),
    ("scaling_factor 0", _config("vae_decoder/config.json", scaling_factor=0), "scaling_factor=0"),
    ("scaling_factor text", _config("vae_decoder/config.json", scaling_factor="abc"), "scaling_factor='abc'"),
    (
        "block_out_channels 5",
        _config("vae_decoder/config.json", block_out_channels=5),
        "block_out_channels=5",
    ),
    ("beta_start 2", _config("scheduler/scheduler_config.json", beta_start=2), "beta_start=2"),
    ("beta_start negative", _config("scheduler/scheduler_config.json", beta_start=-0.5), "beta_start=-0.5"),
    ("clip_sample text", _config("scheduler/scheduler_config.json", clip_sample="yes"), "clip_sample='yes'"),
    (
        "deep JSON",
        _text("scheduler/scheduler_config.json", "[" * 100_000 + "]" * 100_000),
        "nests too deeply",
    ),
    ("huge integer", _text("unet/config.json", '{"sample_size": 1' + "0" * 5000 + "}"), "not valid JSON"),
    ("NaN in JSON", _text("vae_decoder/config.json", '{"scaling_factor": NaN}'), "not valid JSON"),
    ("empty merges.txt", _text("tokenizer/merges.txt", ""), "has no merges"),
    ("binary vocab.json", _text("tokenizer/vocab.json", "\udcff"), "not UTF-8"),
    ("vocab.json a folder", _vocab_folder, "not a regular file"),
    ("defaults with a bad sampler", None, "sampler"),
    ("UNet emitting NaN", _unet("nan"), "unet graph returned NaN"),
    ("UNet of the wrong shape", _unet("shape"), "unet graph returned shape"),
    ("manifest without files", _text("sdexport_manifest.json", '{"format": "sdexport"}'), '"files"'),
    ("manifest not JSON", _text("sdexport_manifest.json", "{"), "not valid JSON"),
]


@pytest.mark.parametrize(("case", "craft", "message"), HOSTILE_FOLDERS, ids=[c[0] for c in HOSTILE_FOLDERS])
def test_hostile_folder_is_refused(case: str, craft, message: str, folder: Path, work: Path) -> None:
    if case == "graph data by absolute path":
        craft = _graph_reading(str(work / "outside" / "secret.bin"))
    if case == "defaults with a bad sampler":
        craft = _manifest_defaults
    if case == "binary vocab.json":
        (folder / "tokenizer" / "vocab.json").write_bytes(b"\xff\xfe{}")
        reseal(folder)
    else:
        craft(folder, work)
    run = sdrun("a cube", "--model", folder, "--out", work / "out" / "x.png", *FAST, cwd=work)
    assert_refused(run, message, work / "out")
    assert "root:x:" not in run.stderr, "a file outside the folder was read into the message"


def _manifest_defaults(folder: Path, work: Path) -> None:
    edit_json(folder, "sdexport_manifest.json", generation_defaults={"sampler": "x" * 10_000})


def test_the_crafted_graph_would_leak_without_the_check(work: Path) -> None:
    """The control for the graph cases: onnxruntime (this one or the old one of test_old_onnxruntime)
    may follow the location; the bytes it would read are the secret's."""
    folder = work / "bare"
    folder.mkdir()
    onnx.save_model(weights_graph("../outside/secret.bin", SECRET), folder / "model.onnx")
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime 1.32 refuses it itself; older versions do not
        assert "outside" in str(error) or "escapes" in str(error) or ".." in str(error), error
        return
    (read,) = session.run(None, {"x": np.zeros(16, np.float32)})
    np.testing.assert_array_equal(read, SECRET)


def test_missing_or_empty_manifest_warns_and_can_be_required(folder: Path, work: Path) -> None:
    out = work / "out"
    for manifest in (None, "{}"):
        path = folder / "sdexport_manifest.json"
        path.unlink(missing_ok=True)
        if manifest is not None:
            path.write_text(manifest)
        run = sdrun("a cube", "--model", folder, "--out", out / "x.png", "--overwrite", *FAST, cwd=work)
        assert run.status == 0, run
        assert "Warning:" in run.stderr and "could be verified" in run.stderr
        refused = sdrun("a", "--model", folder, "--out", out / "y.png", "--require-manifest", *FAST, cwd=work)
        assert refused.status == 1 and "cannot be verified" in refused.stderr
        assert not (out / "y.png").exists()


def _bomb(path: Path) -> Path:
    Image.new("L", (10_000, 10_000)).save(path, optimize=False, compress_level=9)
    return path


def _huge_ztxt(path: Path) -> Path:
    _png_with_chunk(path, b"zTXt", b"parameters\0\0" + zlib.compress(b"a" * (4 * 2**20), 9))
    return path


def _png_with_chunk(path: Path, kind: bytes, data: bytes) -> None:
    Image.new("RGB", (8, 8)).save(path)
    body = path.read_bytes()
    chunk = len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    path.write_bytes(body[:33] + chunk + body[33:])  # after IHDR


def _png_parameters(path: Path, text: str) -> Path:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", text, zip=True)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


GOOD = "a cube\nSteps: 2, Sampler: Euler, CFG scale: 4, Seed: 1, Size: 64x64"
# (case, extra arguments (a callable of the work folder for files), what the error line must say)
HOSTILE_INPUTS = [
    ("guidance nan", ["--guidance", "nan"], "guidance scale nan is out of range"),
    ("guidance inf", ["--guidance", "inf"], "guidance scale inf is out of range"),
    ("huge size", ["--width", "100000", "--height", "100000"], "above the limit"),
    (
        "size over --max-pixels",
        ["--width", "512", "--height", "512", "--max-pixels", "65536"],
        "above the limit",
    ),
    ("a million images", ["--num-images", "1000000"], "--num-images"),
    ("a 100 MB file name", ["--out", "{i:>100000000}.png"], "a field width may be at most"),
    ("a file name too long", ["--out", "x" * 300 + ".png"], "too long"),
    ("--out a folder", lambda w: ["--out", w / "out"], "is a folder"),
    ("--out under a file", lambda w: ["--out", w / "outside" / "secret.bin" / "x.png"], "is not a folder"),
    ("init image bomb", lambda w: ["--init-image", _bomb(w / "bomb.png")], "above the limit"),
    ("init image not an image", lambda w: ["--init-image", w / "outside" / "secret.bin"], "cannot read init"),
    (
        "mask bomb",
        lambda w: [
            "--init-image",
            _png_parameters(w / "i.png", GOOD),
            "--mask",
            _bomb(w / "bomb.png"),
            "--width",  # GOOD's picture is 8x8, too small to take its size from
            "64",
            "--height",
            "64",
        ],
        "the mask is 10000x10000",
    ),
    ("from-png zTXt bomb", lambda w: ["--from-png", _huge_ztxt(w / "z.png")], "inflates past"),
    (
        "from-png CFG nan",
        lambda w: ["--from-png", _png_parameters(w / "n.png", GOOD.replace("4,", "nan,"))],
        "CFG",
    ),
    (
        "from-png Steps 4_0",
        lambda w: ["--from-png", _png_parameters(w / "s.png", GOOD.replace("2,", "4_0,"))],
        "Steps",
    ),
    (
        "from-png 1 MB text",
        lambda w: ["--from-png", _png_parameters(w / "l.png", "a," * 50_000 + GOOD)],
        "characters",
    ),
    (
        "strength inf",
        lambda w: ["--init-image", _png_parameters(w / "i.png", GOOD), "--strength", "inf"],
        "strength",
    ),
]


@pytest.mark.parametrize(("case", "extra", "message"), HOSTILE_INPUTS, ids=[c[0] for c in HOSTILE_INPUTS])
def test_hostile_input_is_refused(
    case: str, extra, message: str, tiny_sdexport_dir: Path, work: Path
) -> None:
    arguments = extra(work) if callable(extra) else extra
    if "--out" not in arguments:
        arguments = [*arguments, "--out", work / "out" / "x.png"]
    prompt = [] if "--from-png" in arguments else ["a cube"]
    run = sdrun(*prompt, "--model", tiny_sdexport_dir, *FAST, *arguments, cwd=work, timeout=60)
    assert_refused(run, message, work / "out")
    assert run.seconds < 30, f"{case} took {run.seconds:.0f} s"


def test_non_utf8_prompt(tiny_sdexport_dir: Path, work: Path) -> None:
    run = sdrun(
        b"a \xff cube", "--model", tiny_sdexport_dir, "--out", work / "out" / "x.png", *FAST, cwd=work
    )
    assert_refused(run, "not valid UTF-8", work / "out")


def test_existing_output_is_kept_unless_overwrite(tiny_sdexport_dir: Path, work: Path) -> None:
    target = work / "out" / "x.png"
    target.write_bytes(b"mine")
    run = sdrun("a cube", "--model", tiny_sdexport_dir, "--out", target, *FAST, cwd=work)
    assert run.status == 1 and "--overwrite" in run.stderr and target.read_bytes() == b"mine"
    run = sdrun("a cube", "--model", tiny_sdexport_dir, "--out", target, "--overwrite", *FAST, cwd=work)
    assert run.status == 0, run
    with Image.open(target) as image:
        assert image.size == (64, 64)


def test_phone_photo_is_scaled_to_the_model(tiny_sdexport_dir: Path, work: Path) -> None:
    """A 4032x3024 photo turned by EXIF (orientation 6: rotate 90 degrees) becomes a 48x72 picture in
    little time and memory: decoded at a reduced scale, upright, scaled (aspect kept) to the model's
    pixel count of 64x64, each side rounded down to a multiple of 8."""
    photo = work / "photo.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6
    gradient = np.linspace(0, 255, 4032, dtype=np.uint8)[None, :, None].repeat(3024, 0).repeat(3, 2)
    Image.fromarray(gradient).save(photo, exif=exif, quality=90)
    out = work / "out" / "p.png"
    run = sdrun("a cube", "--model", tiny_sdexport_dir, "--init-image", photo, "--out", out, *FAST, cwd=work)
    assert run.status == 0, run
    with Image.open(out) as image:
        assert image.size == (48, 72)


def test_full_disk_leaves_no_partial_file(tiny_sdexport_dir: Path, work: Path) -> None:
    """ENOSPC while the PNG is written: a one-line error, no picture and no temporary file left."""
    script = (
        "import errno, sys\n"
        "from PIL import Image\n"
        "def full(*args, **kwargs):\n"
        "    raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "Image.Image.save = full\n"
        "from sdrun.cli import main\n"
        "main(sys.argv[1:])\n"
    )
    out = work / "out"
    command = [
        sys.executable,
        "-c",
        script,
        "a cube",
        "--model",
        str(tiny_sdexport_dir),
        "--out",
        str(out / "x.png"),
    ]
    done = subprocess.run([*command, *FAST], cwd=work, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "No space left on device" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not any(out.iterdir())


def test_bounded_memory_and_time_on_huge_requests(tiny_sdexport_dir: Path, work: Path) -> None:
    """The requests that used to take gigabytes or hours finish at once under the memory limit; the same
    child with the same limit can still make a picture (the limit is not what refuses them)."""
    ok = sdrun("a cube", "--model", tiny_sdexport_dir, "--out", work / "out" / "ok.png", *FAST, cwd=work)
    assert ok.status == 0, ok
    for arguments in (
        ["--width", "100000", "--height", "100000"],
        ["--init-image", _bomb(work / "bomb.png")],
        ["--num-images", "1000"],  # allowed: each image is written as made, none kept
    ):
        out = work / "out" / "many-{i}.png"
        run = sdrun(
            "a cube", "--model", tiny_sdexport_dir, "--out", out, *FAST, *arguments, cwd=work, timeout=600
        )
        assert "Traceback" not in run.stderr and "MemoryError" not in run.stderr, run.stderr
        if arguments[0] != "--num-images":
            assert run.status == 1 and run.seconds < 30
            break_count = len(list((work / "out").glob("many-*.png")))
            assert break_count == 0


def test_parameters_parser_is_linear() -> None:
    """A settings line of word characters and no colon made the old pattern backtrack at every position
    (hours for 1 MB); now 20 kB is parsed and refused at once, a 1 MB text is refused by its length, and
    the pair scanner itself takes a 1 MB line in well under a second."""
    from sdrun.errors import SettingsError
    from sdrun.infotext import _parse_pairs, parse_parameters

    for size in (20_000, 1_000_000):
        started = time.perf_counter()
        with pytest.raises(SettingsError):
            parse_parameters("a prompt\n" + "a" * size)
        assert time.perf_counter() - started < 1.0
    started = time.perf_counter()
    assert _parse_pairs("Steps" * 200_000) == {}
    assert _parse_pairs('Seed: "' + "x" * 1_000_000) == {"Seed": '"' + "x" * 1_000_000}
    assert time.perf_counter() - started < 2.0
