"""Pipeline behaviour on the optimum-exported tiny model: seeds, guidance batching, callbacks, sizes,
image-to-image, providers, and the errors for bad folders and bad settings."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from sdrun.errors import ModelFolderError, ProviderError, SettingsError
from sdrun.pipeline import Pipeline

PROMPT = "a small red cube"
STEPS = 3


@pytest.fixture(scope="module")
def pipeline(tiny_onnx_dir: Path) -> Pipeline:
    return Pipeline.load(tiny_onnx_dir, provider="cpu")


@pytest.fixture
def folder_copy(tiny_onnx_dir: Path, tmp_path: Path) -> Path:
    """A copy of the exported folder that a test may damage."""
    return Path(shutil.copytree(tiny_onnx_dir, tmp_path / tiny_onnx_dir.name))


def _pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


class _RecordingSession:
    """Stands in for the UNet's onnxruntime session and records the batch size of each call."""

    def __init__(self, session: ort.InferenceSession) -> None:
        self._session = session
        self.batches: list[int] = []

    def run(self, outputs, feeds):  # noqa: ANN001, ANN201 - onnxruntime's signature
        self.batches.append(next(v.shape[0] for v in feeds.values() if v.ndim == 4))
        return self._session.run(outputs, feeds)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._session, name)


def _unet_batches(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch, **generate_args: object) -> list[int]:
    recorder = _RecordingSession(pipeline._graphs["unet"].session)
    monkeypatch.setattr(pipeline._graphs["unet"], "session", recorder)
    pipeline.generate(PROMPT, steps=STEPS, seed=0, sampler="euler", **generate_args)
    monkeypatch.undo()
    return recorder.batches


def _write_manifest(folder: Path, **fields: object) -> None:
    files = {
        path.relative_to(folder).as_posix(): {
            "size": path.stat().st_size,
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        }
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
    (folder / "sdexport_manifest.json").write_text(json.dumps({"files": files, **fields}))


def test_auto_provider_takes_cuda_only_where_offered(tiny_onnx_dir: Path) -> None:
    offered = "CUDAExecutionProvider" in ort.get_available_providers()
    assert Pipeline.load(tiny_onnx_dir).provider == ("cuda" if offered else "cpu")


def test_cuda_where_there_is_none_is_a_clear_error(tiny_onnx_dir: Path) -> None:
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime offers CUDA")
    with pytest.raises(ProviderError, match="no CUDA execution provider"):
        Pipeline.load(tiny_onnx_dir, provider="cuda")


def test_constants_come_from_the_folder(folder_copy: Path, tiny_diffusers_dir: Path) -> None:
    vae = json.loads((tiny_diffusers_dir / "vae" / "config.json").read_text())
    unet = json.loads((tiny_diffusers_dir / "unet" / "config.json").read_text())
    loaded = Pipeline.load(folder_copy, provider="cpu")
    assert loaded.facts.latent_scale == vae["scaling_factor"]
    assert loaded.facts.default_size == unet["sample_size"] * 8

    config_path = folder_copy / "vae_decoder" / "config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "scaling_factor": 0.5}))
    assert Pipeline.load(folder_copy, provider="cpu").facts.latent_scale == 0.5


def test_image_i_of_a_batch_is_the_single_image_of_seed_plus_i(pipeline: Pipeline) -> None:
    batch = pipeline.generate(PROMPT, steps=STEPS, seed=10, num_images=3, sampler="euler_a")
    assert [s.seed for s in batch.settings] == [10, 11, 12]
    for index, image in enumerate(batch.images):
        (single,) = pipeline.generate(PROMPT, steps=STEPS, seed=10 + index, sampler="euler_a").images
        np.testing.assert_array_equal(_pixels(image), _pixels(single))
    assert np.abs(_pixels(batch.images[0]) - _pixels(batch.images[1])).max() > 10


def test_noise_is_drawn_in_the_documented_order(pipeline: Pipeline) -> None:
    """From default_rng(seed): (img2img: the VAE sample's noise,) the starting noise, then the sampler's."""
    size = pipeline.facts.default_size
    shape = (1, pipeline.facts.latent_channels, size // 8, size // 8)
    init_image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (size, size, 3), dtype=np.uint8))
    result = pipeline.generate(
        PROMPT, steps=4, seed=7, sampler="euler_a", init_image=init_image, strength=0.5
    )

    rng = np.random.default_rng(7)
    init_latents = pipeline.encode_image(init_image).sample(rng.standard_normal(shape, dtype=np.float32))
    noise = rng.standard_normal(shape, dtype=np.float32)
    latents = pipeline.denoise(
        pipeline.encode_prompt(PROMPT, "", 7.5),
        noise,
        rng,
        steps=4,
        guidance_scale=7.5,
        sampler="euler_a",
        init_latents=init_latents * pipeline.facts.latent_scale,
        strength=0.5,
    )
    np.testing.assert_array_equal(_pixels(result.images[0]), _pixels(pipeline.decode(latents)[0]))


def test_guidance_batches_both_predictions_in_one_unet_call(pipeline: Pipeline, monkeypatch) -> None:
    assert _unet_batches(pipeline, monkeypatch, guidance_scale=7.5) == [2] * STEPS


def test_guidance_one_skips_the_unconditional_pass(pipeline: Pipeline, monkeypatch) -> None:
    assert _unet_batches(pipeline, monkeypatch, guidance_scale=1.0) == [1] * STEPS
    with_negative = pipeline.generate(PROMPT, "ugly", steps=STEPS, seed=0, guidance_scale=1.0).images[0]
    without = pipeline.generate(PROMPT, steps=STEPS, seed=0, guidance_scale=1.0).images[0]
    np.testing.assert_array_equal(_pixels(with_negative), _pixels(without))


def test_sequential_guidance_matches_the_batched_call(
    tiny_onnx_dir: Path, pipeline: Pipeline, monkeypatch
) -> None:
    sequential = Pipeline.load(tiny_onnx_dir, provider="cpu", sequential_guidance=True)
    assert _unet_batches(sequential, monkeypatch) == [1, 1] * STEPS
    args = {"steps": STEPS, "seed": 4, "sampler": "dpmpp_2m", "negative_prompt": "dark"}
    one = sequential.generate(PROMPT, **args).images[0]
    batched = pipeline.generate(PROMPT, **args).images[0]
    assert np.abs(_pixels(one) - _pixels(batched)).max() <= 1


def test_callback_counts_steps_over_all_images_and_can_stop(pipeline: Pipeline) -> None:
    seen: list[tuple[int, int]] = []
    pipeline.generate(PROMPT, steps=STEPS, seed=0, num_images=2, callback=lambda s, t, x: seen.append((s, t)))
    assert seen == [(step, 2 * STEPS) for step in range(2 * STEPS)]

    seen.clear()
    result = pipeline.generate(
        PROMPT, steps=STEPS, seed=0, num_images=2, callback=lambda s, t, x: seen.append((s, t)) or s == 1
    )
    assert result.stopped and len(result.images) == len(result.settings) == 1
    assert seen == [(0, 2 * STEPS), (1, 2 * STEPS)]


def test_image_to_image_runs_the_strength_share_of_the_steps(pipeline: Pipeline) -> None:
    totals = set()
    init_image = Image.new("RGB", (64, 64), (200, 30, 30))
    result = pipeline.generate(
        PROMPT, steps=10, seed=0, init_image=init_image, strength=0.3, callback=lambda s, t, x: totals.add(t)
    )
    assert totals == {3}  # diffusers: int(10 * 0.3) steps
    assert result.settings[0].strength == 0.3


@pytest.mark.parametrize(
    "image_size, asked, produced",
    [((80, 48), (None, None), (80, 48)), ((70, 50), (None, None), (64, 48)), ((80, 48), (64, 32), (64, 32))],
)
def test_image_to_image_size(pipeline: Pipeline, tmp_path: Path, image_size, asked, produced) -> None:
    path = tmp_path / "init.png"
    Image.new("RGB", image_size, (20, 90, 200)).save(path)
    width, height = asked
    result = pipeline.generate(PROMPT, steps=2, seed=0, init_image=path, width=width, height=height)
    assert result.images[0].size == produced
    assert (result.settings[0].width, result.settings[0].height) == produced


def test_text_to_image_default_size_and_settings(pipeline: Pipeline) -> None:
    result = pipeline.generate(PROMPT, "blurry", steps=2, seed=3, guidance_scale=5.0, sampler="ddim")
    (settings,) = result.settings
    assert result.images[0].size == (64, 64)
    assert (settings.prompt, settings.negative_prompt, settings.steps, settings.sampler) == (
        PROMPT,
        "blurry",
        2,
        "ddim",
    )
    assert (settings.seed, settings.guidance_scale, settings.strength) == (3, 5.0, None)
    assert settings.model == "tiny-random-sd"


@pytest.mark.parametrize(
    "args, message",
    [
        ({"height": 72}, "height 72 is not a positive multiple of 16"),
        ({"width": 0}, "width 0 is not a positive multiple"),
        ({"sampler": "heun"}, "unknown sampler 'heun'"),
        ({"steps": 0}, "steps must be a whole number >= 1, not 0"),
        ({"num_images": 0}, "number of images"),
        ({"seed": -1}, "seed must be"),
        ({"init_image": "/nonexistent/picture.png"}, "cannot read init image"),
        ({"init_image": Image.new("RGB", (64, 64)), "strength": 0.0}, "strength"),
        ({"init_image": Image.new("RGB", (64, 64)), "strength": 1.5}, "strength"),
        ({"init_image": Image.new("RGB", (64, 64)), "strength": 0.05, "steps": 10}, "raise strength"),
        ({"init_image": Image.new("RGB", (8, 8))}, "init image is 8x8, smaller than 16 pixels"),
    ],
)
def test_bad_settings_are_clear_errors(pipeline: Pipeline, args: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        pipeline.generate(PROMPT, **{"steps": 2, **args})


def test_init_image_that_is_not_an_image(pipeline: Pipeline, tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("not a picture")
    with pytest.raises(SettingsError, match="cannot read init image"):
        pipeline.generate(PROMPT, steps=2, init_image=path)


def test_missing_component_is_named(folder_copy: Path) -> None:
    (folder_copy / "unet" / "model.onnx").unlink()
    with pytest.raises(ModelFolderError, match=r"has no unet \(unet/model.onnx is missing\)"):
        Pipeline.load(folder_copy, provider="cpu")


def test_missing_vae_encoder_only_stops_image_to_image(folder_copy: Path) -> None:
    shutil.rmtree(folder_copy / "vae_encoder")
    loaded = Pipeline.load(folder_copy, provider="cpu")
    assert len(loaded.generate(PROMPT, steps=2, seed=0).images) == 1
    with pytest.raises(ModelFolderError, match="no vae_encoder"):
        loaded.generate(PROMPT, steps=2, init_image=Image.new("RGB", (64, 64)))


def test_missing_folder_and_scheduler_config(folder_copy: Path) -> None:
    with pytest.raises(ModelFolderError, match="does not exist"):
        Pipeline.load(folder_copy / "nothing-here")
    (folder_copy / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(ModelFolderError, match="scheduler/scheduler_config.json is missing"):
        Pipeline.load(folder_copy)


def test_unusable_scheduler_config(folder_copy: Path) -> None:
    path = folder_copy / "scheduler" / "scheduler_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "beta_schedule": "exotic"}))
    with pytest.raises(ModelFolderError, match="beta_schedule"):
        Pipeline.load(folder_copy, provider="cpu")


def test_manifest_checksums(folder_copy: Path) -> None:
    _write_manifest(folder_copy)
    Pipeline.load(folder_copy, provider="cpu")

    graph = folder_copy / "text_encoder" / "model.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    with pytest.raises(ModelFolderError, match="text_encoder/model.onnx fails its SHA-256 check"):
        Pipeline.load(folder_copy, provider="cpu")
    # Sizes are still checked without checksums: the flipped byte goes unseen, a cut file does not.
    Pipeline.load(folder_copy, provider="cpu", verify_checksums=False)
    graph.write_bytes(bytes(data[:-10]))
    with pytest.raises(ModelFolderError, match=r"text_encoder/model.onnx has \d+ bytes, the manifest says"):
        Pipeline.load(folder_copy, provider="cpu", verify_checksums=False)


def test_manifest_can_relax_the_size_multiple(folder_copy: Path) -> None:
    # 8 for the VAE, 2 for the UNet
    assert Pipeline.load(folder_copy, provider="cpu").facts.size_multiple == 16
    _write_manifest(folder_copy, latent_size_multiple=1)
    assert Pipeline.load(folder_copy, provider="cpu").facts.size_multiple == 8


def test_manifest_lists_a_missing_file(folder_copy: Path) -> None:
    _write_manifest(folder_copy)
    (folder_copy / "tokenizer" / "special_tokens_map.json").unlink()
    with pytest.raises(ModelFolderError, match="tokenizer/special_tokens_map.json is missing"):
        Pipeline.load(folder_copy, provider="cpu")


def test_damaged_graph_without_manifest(folder_copy: Path) -> None:
    (folder_copy / "vae_decoder" / "model.onnx").write_bytes(b"\x00garbage")
    with pytest.raises(ModelFolderError, match="vae_decoder/model.onnx is not an ONNX graph"):
        Pipeline.load(folder_copy, provider="cpu")


def test_cuda_that_cannot_start(tiny_onnx_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime-gpu lists CUDA even when its libraries do not load, then runs on the CPU: "auto" says it
    took the CPU, "cuda" is refused. A CPU-only onnxruntime asked for CUDA behaves the same way."""
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has CUDA")
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert Pipeline.load(tiny_onnx_dir, provider="auto").provider == "cpu"
    with pytest.raises(ProviderError, match="could not start CUDAExecutionProvider"):
        Pipeline.load(tiny_onnx_dir, provider="cuda")


def test_unset_settings_are_the_folders_defaults_else_sd_ones(folder_copy: Path, pipeline: Pipeline) -> None:
    (plain,) = pipeline.generate(PROMPT, seed=1).settings
    assert (plain.steps, plain.guidance_scale, plain.sampler) == (20, 7.5, "euler_a")

    _write_manifest(folder_copy, generation_defaults={"steps": 3, "guidance_scale": 4, "sampler": "ddim"})
    own = Pipeline.load(folder_copy, provider="cpu")
    (settings,) = own.generate(PROMPT, seed=1).settings
    assert (settings.steps, settings.guidance_scale, settings.sampler) == (3, 4.0, "ddim")
    (overridden,) = own.generate(PROMPT, seed=1, steps=2).settings
    assert overridden.steps == 2

    (folder_copy / "sdexport_manifest.json").unlink()
    _write_manifest(folder_copy, generation_defaults={"cfg": 4})
    with pytest.raises(ModelFolderError, match="generation_defaults"):
        Pipeline.load(folder_copy, provider="cpu")
