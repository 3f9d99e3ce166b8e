"""The second round of hostile probes (issue 26, items 10-12 and 15): output patterns, onnxruntime's run-time
failures, outputs taken while a run works, and the small ones. CLI cases run as test_hostile_inputs.py runs
them (a child process under a memory limit: exit 1 or 2, one "Error: ..." line, no traceback, nothing
written); what needs no child is checked in this process."""

import errno
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hostile_folders import copy_folder, edit_json, reseal
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from test_hostile_inputs import FAST, assert_refused, sdrun

from sdrun.errors import GraphOutputError, GraphRunError, SettingsError
from sdrun.graphs import Graph
from sdrun.outputs import output_paths
from sdrun.png_files import read_png_settings, save_png
from sdrun.settings import ImageSettings


@pytest.fixture
def out(tmp_path: Path) -> Path:
    (tmp_path / "out").mkdir()
    return tmp_path / "out"


# --- 10: the --out pattern -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "pattern",
    ["{i:{seed}}.png", "{seed:{i}}.png", "{i:>100000000}.png", "{i:099}.png", "{seed!r}.png", "{i.real}.png"],
)
def test_out_pattern_allows_only_bounded_plain_fields(pattern: str) -> None:
    with pytest.raises(SettingsError, match="--out"):
        output_paths(pattern, [10**9])


def test_out_pattern_keeps_the_documented_fields() -> None:
    assert output_paths("a-{i:03}-{seed:>6}-{seed}.png", [7, 8]) == [
        Path("a-000-     7-7.png"),
        Path("a-001-     8-8.png"),
    ]
    assert output_paths("b.png", [1, 2]) == [Path("b-0.png"), Path("b-1.png")]


def test_nested_field_with_a_large_seed_is_refused_at_once(tiny_sdexport_dir: Path, out: Path) -> None:
    run = sdrun(
        "a cube",
        "--model",
        tiny_sdexport_dir,
        *FAST,
        "--seed",
        "4000000000",
        "--out",
        out / "{i:{seed}}.png",
        cwd=out.parent,
    )
    assert_refused(run, "plain integer one", out)
    assert run.seconds < 30


# --- 11: onnxruntime's failures at run time --------------------------------------------------------------


def _unet_model(nodes: list[onnx.NodeProto], kind: int = TensorProto.FLOAT, init=()) -> onnx.ModelProto:
    """A graph with the UNet's inputs whose nodes make `out_sample` of element type `kind`."""
    sample = helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["b", 4, "h", "w"])
    timestep = helper.make_tensor_value_info("timestep", TensorProto.FLOAT, [])
    context = helper.make_tensor_value_info("encoder_hidden_states", TensorProto.FLOAT, ["b", 77, "c"])
    result = helper.make_tensor_value_info("out_sample", kind, None)
    graph = helper.make_graph(nodes, "hostile_unet", [sample, timestep, context], [result], list(init))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def _cast_to(kind: int) -> onnx.ModelProto:
    return _unet_model([helper.make_node("Cast", ["sample"], ["out_sample"], to=kind)], kind)


def _huge_allocation() -> onnx.ModelProto:
    """160 GB of zeros, allocated inside the graph."""
    shape = numpy_helper.from_array(np.array([200_000, 200_000], np.int64), "shape")
    return _unet_model([helper.make_node("ConstantOfShape", ["shape"], ["out_sample"])], init=[shape])


def _bad_reshape() -> onnx.ModelProto:
    """A reshape that fits no sample: onnxruntime fails inside the run."""
    shape = numpy_helper.from_array(np.array([3, 5], np.int64), "shape")
    return _unet_model([helper.make_node("Reshape", ["sample", "shape"], ["out_sample"])], init=[shape])


def _replace_unet(model: Callable[[], onnx.ModelProto]) -> Callable[[Path], None]:
    def craft(folder: Path) -> None:
        (folder / "unet" / "model.onnx.data").unlink(missing_ok=True)
        onnx.save_model(model(), folder / "unet" / "model.onnx")
        manifest = json.loads((folder / "sdexport_manifest.json").read_text())
        manifest["files"].pop("unet/model.onnx.data", None)
        (folder / "sdexport_manifest.json").write_text(json.dumps(manifest))
        reseal(folder)

    return craft


def _token_length(length: int) -> Callable[[Path], None]:
    return lambda folder: edit_json(folder, "tokenizer/tokenizer_config.json", model_max_length=length)


# (case, how the folder is crafted, what the error line must say)
RUN_FAILURES = [
    ("UNet returning bool", _replace_unet(lambda: _cast_to(TensorProto.BOOL)), "returned bool values"),
    ("UNet returning strings", _replace_unet(lambda: _cast_to(TensorProto.STRING)), "values, not numbers"),
    ("160 GB inside the UNet", _replace_unet(_huge_allocation), "could not run the unet graph"),
    ("UNet failing a reshape", _replace_unet(_bad_reshape), "could not run the unet graph"),
    ("model_max_length 1000", _token_length(1000), "model_max_length 1000"),
    ("model_max_length 1", _token_length(1), "model_max_length 1"),
]


@pytest.mark.parametrize(("case", "craft", "message"), RUN_FAILURES, ids=[c[0] for c in RUN_FAILURES])
def test_run_failure_is_one_line(case: str, craft, message: str, tiny_sdexport_dir: Path, out: Path) -> None:
    folder = copy_folder(tiny_sdexport_dir, out.parent / "model")
    craft(folder)
    run = sdrun("a cube", "--model", folder, "--out", out / "x.png", *FAST, cwd=out.parent, timeout=60)
    assert_refused(run, message, out)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _identity_graph() -> Graph:
    node = helper.make_node("Identity", ["x"], ["y"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    model = helper.make_model(
        helper.make_graph([node], "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)], ir_version=10
    )
    return Graph("text_encoder", _session(model))


def test_graph_run_names_the_component_and_the_fix() -> None:
    graph = _identity_graph()
    with pytest.raises(
        GraphRunError, match=r"could not run the text_encoder graph .*export the model folder"
    ):
        graph.run({graph.inputs[0]: np.zeros(3, np.float32)})  # the graph takes 2 values


def test_memory_error_in_a_run_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    graph = _identity_graph()

    class Exhausted:
        def run(self, *args: object) -> None:
            raise MemoryError

    monkeypatch.setattr(graph, "session", Exhausted())
    with pytest.raises(GraphRunError, match="ran out of memory.*smaller size"):
        graph.run({graph.inputs[0]: np.zeros(2, np.float32)})


def test_the_server_answers_a_failed_run_with_500() -> None:
    """The server's fault (memory, or a folder it serves), as a graph's NaN is; not the request's 400."""
    from sdrun.serve.errors import _LIBRARY_STATUS

    assert next(code for kind, code in _LIBRARY_STATUS if isinstance(GraphRunError("x"), kind)) == 500


def test_memory_error_outside_a_graph_is_one_line(tiny_sdexport_dir: Path, out: Path) -> None:
    """numpy runs out too (latents, tiles, the picture): the CLI reports it as onnxruntime's."""
    script = (
        "import sys\n"
        "import sdrun.cli as cli\n"
        "def exhausted(*args, **kwargs):\n"
        "    raise MemoryError\n"
        "cli.Pipeline.generate_each = exhausted\n"
        "cli.main(sys.argv[1:])\n"
    )
    arguments = ["a cube", "--model", str(tiny_sdexport_dir), "--out", str(out / "x.png"), *FAST]
    done = subprocess.run(
        [sys.executable, "-c", script, *arguments], capture_output=True, text=True, timeout=60
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert done.returncode == 1 and len(errors) == 1 and "ran out of memory" in errors[0], done.stderr
    assert "Traceback" not in done.stderr and not list(out.iterdir())


def test_bool_outputs_are_refused_in_process() -> None:
    graph = Graph("unet", _session(_cast_to(TensorProto.BOOL)))
    feeds = {
        node: np.zeros([1, 4, 8, 8] if node.rank == 4 else [1, 77, 8][: node.rank]) for node in graph.inputs
    }
    with pytest.raises(GraphOutputError, match="returned bool values"):
        graph.run(feeds)


# --- 12: the output name, taken at write time ------------------------------------------------------------

SETTINGS = ImageSettings(
    prompt="a cube",
    negative_prompt="",
    steps=2,
    sampler="euler",
    guidance_scale=4.0,
    seed=1,
    width=8,
    height=8,
)


def _picture(color: str = "red") -> Image.Image:
    return Image.new("RGB", (8, 8), color)


def _leftovers(folder: Path) -> list[str]:
    return [path.name for path in folder.iterdir() if path.name.endswith(".partial")]


def test_a_name_taken_during_the_run_is_kept(out: Path) -> None:
    path = out / "x.png"
    save_png(_picture(), path, SETTINGS)
    first = path.read_bytes()
    with pytest.raises(SettingsError, match=f"{path} exists.*--overwrite"):
        save_png(_picture("blue"), path, SETTINGS)  # a second run with the same --out
    assert path.read_bytes() == first and not _leftovers(out)
    save_png(_picture("blue"), path, SETTINGS, overwrite=True)
    assert path.read_bytes() != first and read_png_settings(path) == SETTINGS


def test_a_dangling_symlink_is_not_replaced(out: Path) -> None:
    path = out / "x.png"
    path.symlink_to(out / "elsewhere.png")
    with pytest.raises(SettingsError, match="exists"):
        save_png(_picture(), path, SETTINGS)
    assert path.is_symlink() and not (out / "elsewhere.png").exists() and not _leftovers(out)


def test_without_hard_links_the_name_is_created_exclusively(
    out: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_links(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    path = out / "x.png"
    save_png(_picture(), path, SETTINGS)
    assert read_png_settings(path) == SETTINGS and not _leftovers(out)
    mode = path.stat().st_mode & 0o777
    with pytest.raises(SettingsError, match="exists"):
        save_png(_picture("blue"), path, SETTINGS)
    dangling = out / "y.png"
    dangling.symlink_to(out / "elsewhere.png")
    with pytest.raises(SettingsError, match="exists"):
        save_png(_picture(), dangling, SETTINGS)
    assert dangling.is_symlink() and not (out / "elsewhere.png").exists() and not _leftovers(out)
    assert mode == 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_dangling_symlink_at_out_is_refused_before_the_work(tiny_sdexport_dir: Path, out: Path) -> None:
    (out / "x.png").symlink_to(out.parent / "elsewhere.png")
    run = sdrun("a cube", "--model", tiny_sdexport_dir, "--out", out / "x.png", *FAST, cwd=out.parent)
    errors = [line for line in run.stderr.splitlines() if line.startswith("Error: ")]
    assert run.status == 1 and len(errors) == 1 and "x.png exists" in errors[0], run
    assert "Traceback" not in run.stderr and list(out.iterdir()) == [out / "x.png"]
    assert (out / "x.png").is_symlink() and not (out.parent / "elsewhere.png").exists()


def test_a_name_taken_mid_run_stops_with_earlier_pictures_kept(tiny_sdexport_dir: Path, out: Path) -> None:
    """Another program takes the second picture's name while the first is made."""
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "import sdrun.cli as cli\n"
        "original = cli.save_png\n"
        "def save(image, path, *args, **kwargs):\n"
        "    original(image, path, *args, **kwargs)\n"
        "    Path(path).with_name('x-1.png').write_bytes(b'mine')\n"
        "cli.save_png = save\n"
        "cli.main(sys.argv[1:])\n"
    )
    arguments = [
        "a cube",
        "--model",
        str(tiny_sdexport_dir),
        "--out",
        str(out / "x-{i}.png"),
        "--num-images",
        "2",
    ]
    done = subprocess.run(
        [sys.executable, "-c", script, *arguments, *FAST],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert done.returncode == 1 and len(errors) == 1 and "x-1.png exists" in errors[0], done.stderr
    assert "Traceback" not in done.stderr
    assert (out / "x-1.png").read_bytes() == b"mine"
    assert read_png_settings(out / "x-0.png").seed == 3 and not _leftovers(out)


# --- 15: the small ones ----------------------------------------------------------------------------------


def test_one_seed_range_everywhere(tiny_sdexport_dir: Path, out: Path) -> None:
    """Every seed the library and the CLI take is one the PNG reader reads back (the server's schemas
    import the same MAX_SEED)."""
    from sdrun.infotext import parse_parameters
    from sdrun.serve import schemas
    from sdrun.settings import MAX_SEED

    assert schemas.MAX_SEED == MAX_SEED == 2**32 - 1
    line = "a cube\nSteps: 2, Sampler: Euler, CFG scale: 4, Seed: {}, Size: 64x64"
    assert parse_parameters(line.format(MAX_SEED)).seed == MAX_SEED
    with pytest.raises(SettingsError, match="Seed: 4294967296 is above 4294967295"):
        parse_parameters(line.format(MAX_SEED + 1))
    for arguments, message in (
        (["--seed", "1" * 21], "--seed"),
        (["--seed", str(MAX_SEED), "--num-images", "2"], "from 0 to 4294967294 (image i of 2"),
    ):
        run = sdrun(
            "a cube", "--model", tiny_sdexport_dir, *FAST, *arguments, "--out", out / "x.png", cwd=out
        )
        assert_refused(run, message, out)


def test_library_refuses_odd_values_in_one_line(tiny_sdexport_dir: Path) -> None:
    from sdrun.errors import SdrunError
    from sdrun.pipeline import Pipeline
    from sdrun.settings import MAX_SEED

    with Pipeline.load(tiny_sdexport_dir, provider="cpu") as pipeline:
        for arguments, message in (
            ({"seed": MAX_SEED + 1}, "seed must be a whole number from 0 to 4294967295, not 4294967296"),
            ({"seed": MAX_SEED, "num_images": 2}, "gets seed \\+ i"),
            ({"seed": 10**100}, r"not '10{79}'\.\.\.$"),  # quoted, and cut
            ({"sampler": ["euler"]}, "unknown sampler \\['euler'\\]"),
            ({"sampler": "x" * 60_000}, "unknown sampler 'x{80}'\\.\\.\\.: choose"),
            ({"init_image": 123}, "init image must be a PIL image or a file path, not int"),
            (
                {"init_image": Image.new("RGB", (64, 64)), "mask": 4.5},
                "mask must be a PIL image or a file path, not float",
            ),
        ):
            with pytest.raises(SettingsError, match=message) as error:
                pipeline.prepare("a cube", **arguments)
            # One line, bounded: an 80-character quote and at most the 21 sampler names.
            assert len(str(error.value)) < 400
        pipeline.prepare("a cube", seed=MAX_SEED)  # the top of the range itself
    assert not pipeline.sessions.open_graphs
    with pytest.raises(SdrunError, match="pipeline is closed"):
        pipeline.encode_prompt("a cube", "", 1.0)
    assert not pipeline.sessions.open_graphs, "a closed pipeline reopened a session"


def test_long_sampler_field_gives_a_short_line(tiny_sdexport_dir: Path, out: Path) -> None:
    from test_hostile_inputs import _png_parameters

    text = "a cube\nSteps: 2, Sampler: " + "x" * 60_000 + ", CFG scale: 4, Seed: 1, Size: 64x64"
    png = _png_parameters(out.parent / "long.png", text)
    run = sdrun(
        "--model", tiny_sdexport_dir, *FAST, "--from-png", png, "--out", out / "x.png", cwd=out.parent
    )
    assert_refused(run, "unknown sampler", out)
    assert len(run.stderr) < 400, len(run.stderr)


def test_bench_json_to_an_unwritable_path_is_one_line(tmp_path: Path) -> None:
    from sdrun.bench import Report, write_json

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SettingsError, match=f"cannot write {blocker}/r.json: .*choose another --json"):
        write_json(Report("test", 64), blocker / "r.json")
