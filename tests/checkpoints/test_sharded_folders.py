"""Sharded, fp16-variant and pickled diffusers folders, written by diffusers' and transformers' own
`save_pretrained`, load exactly as the plain folder of the same networks does; hostile index files are
refused with one line."""

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_bad_input import RunsCode, load_error
from test_diffusers_folder import Reference

from sdexport.checkpoints import LoadedModel, load_model, tensor_files
from sdexport.models import StableDiffusionConfig

COMPONENTS = ("unet", "vae", "text_encoder")
SHARD_SIZE = "200KB"  # the tiny UNet in 47 parts, the VAE in 33, the text encoder in 2
UNET_INDEX = "unet/diffusion_pytorch_model.safetensors.index.json"


def save(reference: Reference, plain: Path, folder: Path, **options) -> Path:
    """The reference networks saved again into `folder` with save_pretrained `options`."""
    for component in COMPONENTS:
        module = getattr(reference, component)
        if options.get("variant") == "fp16":
            module = copy.deepcopy(module).half()
        module.save_pretrained(folder / component, **options)
    shutil.copytree(plain / "scheduler", folder / "scheduler")
    shutil.copy(plain / "model_index.json", folder)
    return folder


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Reference, Path, LoadedModel]:
    """The networks, their plain folder (one safetensors file each) and our model loaded from it."""
    plain = tmp_path_factory.mktemp("plain") / "model"
    networks = Reference(StableDiffusionConfig.tiny(), plain)
    return networks, plain, load_model(plain)


@pytest.fixture(scope="module")
def sharded(reference, tmp_path_factory) -> Path:
    """A sharded safetensors folder, copied for each test that damages it."""
    networks, plain, _ = reference
    return save(networks, plain, tmp_path_factory.mktemp("sharded") / "model", max_shard_size=SHARD_SIZE)


def assert_same_model(loaded: LoadedModel, expected: LoadedModel, dtype: torch.dtype) -> None:
    ours = loaded.model.state_dict()
    assert sorted(ours) == sorted(expected.model.state_dict())
    for key, tensor in expected.model.state_dict().items():
        assert ours[key].dtype == torch.float32, key
        assert torch.equal(ours[key], tensor.to(dtype).float()), key


@pytest.mark.parametrize("shard_size", [SHARD_SIZE, None], ids=["sharded", "one-file"])
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
@pytest.mark.parametrize("variant", [None, "fp16"])
def test_saved_folder_loads_as_the_plain_one(
    tmp_path: Path, reference, shard_size: str | None, safe: bool, variant: str | None
) -> None:
    networks, plain, expected = reference
    options = {"safe_serialization": safe, "variant": variant}
    if shard_size:
        options["max_shard_size"] = shard_size
    folder = save(networks, plain, tmp_path / "model", **options)
    index = (
        "diffusion_pytorch_model."
        + ("safetensors" if safe else "bin")
        + ".index"
        + (f".{variant}" if variant else "")
    )
    assert (folder / "unet" / f"{index}.json").is_file() == bool(shard_size)

    loaded = load_model(folder)

    assert_same_model(loaded, expected, torch.float16 if variant else torch.float32)
    assert loaded.source_dtype == ("float16" if variant else "float32")
    fp16_notes = [note for note in loaded.notes if "fp16 variant" in note]
    assert len(fp16_notes) == (3 if variant else 0)


def test_plain_weights_are_preferred_to_the_fp16_variant(tmp_path: Path, reference) -> None:
    networks, plain, expected = reference
    folder = save(networks, plain, tmp_path / "model", max_shard_size=SHARD_SIZE)
    for component in COMPONENTS:
        copy.deepcopy(getattr(networks, component)).half().save_pretrained(folder / component, variant="fp16")
    loaded = load_model(folder)
    assert_same_model(loaded, expected, torch.float32)
    assert loaded.source_dtype == "float32"
    assert not any("fp16" in note for note in loaded.notes)


def test_hugging_face_cache_links(tmp_path: Path, reference, sharded: Path) -> None:
    """In the hub's cache every file is a link into one blobs folder: the parts still lie beside the index."""
    _, _, expected = reference
    folder = tmp_path / "snapshot"
    shutil.copytree(sharded, folder)
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    for path in (folder / "unet").iterdir():
        blob = blobs / f"blob-{path.name}"
        path.rename(blob)
        path.symlink_to(blob)
    assert_same_model(load_model(folder), expected, torch.float32)


@pytest.fixture()
def damaged(tmp_path: Path, sharded: Path) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(sharded, folder)
    return folder


def rewrite_index(folder: Path, change) -> None:
    path = folder / UNET_INDEX
    index = json.loads(path.read_text())
    change(index["weight_map"])
    path.write_text(json.dumps(index))


def first_part(folder: Path) -> str:
    return sorted(json.loads((folder / UNET_INDEX).read_text())["weight_map"].values())[0]


@pytest.mark.parametrize(
    "name",
    [
        "../vae/diffusion_pytorch_model.safetensors",
        "/etc/passwd",
        "sub/part.safetensors",
        "..",
        "part.bin",  # a pickle named by a safetensors index
        "part.safetensors\\..\\x.safetensors",
    ],
)
def test_part_that_is_not_a_plain_file_name_beside_the_index(damaged: Path, name: str) -> None:
    rewrite_index(damaged, lambda weights: weights.update({"conv_in.weight": name}))
    message = load_error(damaged)
    assert f"{UNET_INDEX} names the part" in message and "beside the index" in message


def test_part_linking_outside_its_folder(damaged: Path, tmp_path: Path) -> None:
    part = damaged / "unet" / first_part(damaged)
    outside = tmp_path / "elsewhere.safetensors"
    part.rename(outside)
    part.symlink_to(outside)
    assert f"the part {part.name} links outside the folder of its index" in load_error(damaged)


def test_missing_part(damaged: Path) -> None:
    name = first_part(damaged)
    (damaged / "unet" / name).unlink()
    assert f"names the part {name}, which is missing" in load_error(damaged)


def test_tensor_listed_but_absent(damaged: Path) -> None:
    name = first_part(damaged)
    rewrite_index(damaged, lambda weights: weights.update({"conv_in.extra": name}))
    assert f"lists conv_in.extra in {name}, which does not hold it" in load_error(damaged)


def test_tensor_listed_in_the_wrong_part(damaged: Path) -> None:
    names = sorted(set(json.loads((damaged / UNET_INDEX).read_text())["weight_map"].values()))
    rewrite_index(damaged, lambda weights: weights.update({"conv_in.weight": names[-1]}))
    assert f"lists conv_in.weight in {names[-1]}, which does not hold it" in load_error(damaged)


def test_tensor_in_two_parts(damaged: Path) -> None:
    weights = json.loads((damaged / UNET_INDEX).read_text())["weight_map"]
    first, last = sorted(set(weights.values()))[0], sorted(set(weights.values()))[-1]
    stolen = next(key for key, name in weights.items() if name == first)
    part = damaged / "unet" / last
    tensors = load_file(part)
    tensors[stolen] = torch.zeros(1)
    save_file(tensors, part)
    assert f"{stolen} is in both {first} and {last}" in load_error(damaged)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "is not valid JSON"),
        ('{"metadata": {}}', "has no weight_map"),
        ('["conv_in.weight"]', "has no weight_map"),
        (
            '{"weight_map": {"conv_in.weight": ["a", "b"]}}',
            "names a part ['a', 'b'], which is not a file name",
        ),
    ],
)
def test_index_that_is_not_an_index(damaged: Path, text: str, expected: str) -> None:
    (damaged / UNET_INDEX).write_text(text)
    assert expected in load_error(damaged)


def test_index_too_large(damaged: Path, monkeypatch) -> None:
    monkeypatch.setattr(tensor_files, "MAX_INDEX_BYTES", 1000)
    assert "too large for an index" in load_error(damaged)


def test_pickled_part_that_runs_code(tmp_path: Path, reference) -> None:
    networks, plain, _ = reference
    folder = save(networks, plain, tmp_path / "model", max_shard_size=SHARD_SIZE, safe_serialization=False)
    index = json.loads((folder / "unet" / "diffusion_pytorch_model.bin.index.json").read_text())
    name = sorted(index["weight_map"].values())[0]
    marker = tmp_path / "code-ran"
    torch.save({"conv_in.weight": RunsCode(marker)}, folder / "unet" / name)
    message = load_error(folder)
    assert not marker.exists()
    assert f"part {name}: refused to unpickle" in message
