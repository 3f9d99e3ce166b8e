"""Reading TAESD weights: madebyollin's files and diffusers' AutoencoderTiny folders.

madebyollin publishes the two halves as separate files (`taesd_decoder.safetensors` or `.pth`, and
`taesd_encoder...`), each the state dict of an `nn.Sequential`: the decoder's keys start at `1.weight`
(index 0 is its parameterless Clamp), the encoder's at `0.weight`; `sdexport.models.taesd` has that
layout. diffusers' `AutoencoderTiny` keeps both in one `diffusion_pytorch_model.safetensors` under
`decoder.layers.N` and `encoder.layers.N`; its decoder applies the clamp outside `layers`, so its index
N is madebyollin's N + 1, while the encoder's indices agree. That renaming and the config.json mapping
live here and nowhere else.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from sdexport.checkpoints.diffusers_configs import DIFFUSERS_VERSION
from sdexport.checkpoints.errors import CheckpointError
from sdexport.checkpoints.json_files import read_json_object
from sdexport.checkpoints.tensor_files import read_tensor_file
from sdexport.models.taesd import TAESD, TAESDConfig

DIFFUSERS_CONFIG = "config.json"
DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
HALVES = ("decoder", "encoder")
# Where diffusers' decoder layer N sits in madebyollin's Sequential, by half.
_DIFFUSERS_INDEX_SHIFT = {"decoder": 1, "encoder": 0}
_WHAT_TO_GIVE = (
    "give madebyollin's taesd_decoder (and taesd_encoder) .safetensors/.pth files "
    "or a diffusers AutoencoderTiny folder"
)


@dataclass(frozen=True)
class LoadedTAESD:
    model: TAESD
    sources: tuple[Path, ...]  # the files or the folder read
    layout: str  # "madebyollin" or "diffusers"


def load_taesd(paths: Sequence[Path]) -> LoadedTAESD:
    """TAESD from a diffusers AutoencoderTiny folder, or from one or two madebyollin files (the decoder,
    and optionally the encoder; a file with both halves also does)."""
    paths = [Path(path) for path in paths]
    missing = [path for path in paths if not path.exists()]
    if missing:
        raise CheckpointError(f"tiny VAE {missing[0]} does not exist; {_WHAT_TO_GIVE}")
    if len(paths) == 1 and paths[0].is_dir():
        config, halves = _read_diffusers_folder(paths[0])
        layout = "diffusers"
    else:
        halves, layout = _read_files(paths), "madebyollin"
        config = _config_of_decoder(halves.get("decoder", {}))
    if "decoder" not in halves:
        raise CheckpointError(
            f"tiny VAE: no decoder among {', '.join(p.name for p in paths)}; {_WHAT_TO_GIVE}"
        )
    model = TAESD(config, with_encoder="encoder" in halves)
    for half, weights in halves.items():
        _load_half(getattr(model, half), weights, half)
    return LoadedTAESD(model.eval(), tuple(paths), layout)


def diffusers_to_madebyollin(state: Mapping[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    """AutoencoderTiny's `decoder.layers.N.rest` / `encoder.layers.N.rest` -> per half, madebyollin's keys."""
    halves: dict[str, dict[str, Tensor]] = {}
    for key, tensor in state.items():
        half, layers, index, rest = (key.split(".", 3) + ["", "", ""])[:4]
        if half not in HALVES or layers != "layers" or not index.isdigit() or not rest:
            raise CheckpointError(f"tiny VAE: unexpected key {key!r} for a diffusers AutoencoderTiny")
        halves.setdefault(half, {})[f"{int(index) + _DIFFUSERS_INDEX_SHIFT[half]}.{rest}"] = tensor
    return halves


def taesd_config_to_diffusers(config: TAESDConfig) -> dict[str, Any]:
    """The diffusers `AutoencoderTiny` config.json of `config` (TAESD's own scaling factor is 1)."""
    return {
        "_class_name": "AutoencoderTiny",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "relu",
        "block_out_channels": [config.channels] * len(config.decoder_blocks),
        "decoder_block_out_channels": [config.channels] * len(config.decoder_blocks),
        "encoder_block_out_channels": [config.channels] * len(config.encoder_blocks),
        "force_upcast": False,
        "in_channels": config.image_channels,
        "latent_channels": config.latent_channels,
        "latent_magnitude": 3,
        "latent_shift": 0.5,
        "num_decoder_blocks": list(config.decoder_blocks),
        "num_encoder_blocks": list(config.encoder_blocks),
        "out_channels": config.image_channels,
        "scaling_factor": 1.0,
        "shift_factor": 0.0,
        "upsample_fn": "nearest",
        "upsampling_scaling_factor": 2,
    }


def _read_diffusers_folder(folder: Path) -> tuple[TAESDConfig, dict[str, dict[str, Tensor]]]:
    config_path = folder / DIFFUSERS_CONFIG
    weights = next((folder / name for name in DIFFUSERS_WEIGHTS if (folder / name).is_file()), None)
    if not config_path.is_file() or weights is None:
        raise CheckpointError(
            f"tiny VAE folder {folder} lacks {DIFFUSERS_CONFIG} or {DIFFUSERS_WEIGHTS[0]}; {_WHAT_TO_GIVE}"
        )
    config = read_json_object(config_path, f"tiny VAE {config_path}")
    return _config_from_diffusers(config, config_path), diffusers_to_madebyollin(read_tensor_file(weights))


def _config_from_diffusers(config: Mapping[str, Any], path: Path) -> TAESDConfig:
    if config.get("_class_name") != "AutoencoderTiny":
        raise CheckpointError(
            f"tiny VAE {path} describes a {config.get('_class_name')!r}, not an AutoencoderTiny; "
            + _WHAT_TO_GIVE
        )
    # Settings madebyollin's networks never vary, and the latent units the export converts from.
    fixed = {
        "act_fn": "relu",
        "upsample_fn": "nearest",
        "upsampling_scaling_factor": 2,
        "scaling_factor": 1.0,
        "shift_factor": 0.0,
    }
    for key, value in fixed.items():
        if config.get(key, value) != value:
            raise CheckpointError(f"tiny VAE {path}: {key} {config[key]!r} is not TAESD's {value!r}")
    widths = set(config.get("encoder_block_out_channels", [64])) | set(
        config.get("decoder_block_out_channels", [64])
    )
    if len(widths) != 1 or config.get("in_channels", 3) != config.get("out_channels", 3):
        raise CheckpointError(f"tiny VAE {path}: channel widths {sorted(widths)} differ from level to level")
    defaults = TAESDConfig()
    return TAESDConfig(
        image_channels=int(config.get("in_channels", defaults.image_channels)),
        latent_channels=int(config.get("latent_channels", defaults.latent_channels)),
        channels=int(widths.pop()),
        encoder_blocks=tuple(config.get("num_encoder_blocks", defaults.encoder_blocks)),
        decoder_blocks=tuple(config.get("num_decoder_blocks", defaults.decoder_blocks)),
    )


def _read_files(paths: Sequence[Path]) -> dict[str, dict[str, Tensor]]:
    if any(path.is_dir() for path in paths):
        raise CheckpointError(f"tiny VAE: a diffusers folder is given alone; {_WHAT_TO_GIVE}")
    halves: dict[str, dict[str, Tensor]] = {}
    for path in paths:
        for half, weights in _halves_of_file(path).items():
            if half in halves:
                raise CheckpointError(f"tiny VAE: two {half}s given ({path.name} is the second)")
            halves[half] = weights
    return halves


def _halves_of_file(path: Path) -> dict[str, dict[str, Tensor]]:
    """The halves one file holds, under madebyollin's keys: a bare decoder or encoder Sequential, a
    TAESD module's state dict (`decoder.N`, `encoder.N`) or an AutoencoderTiny's (`decoder.layers.N`)."""
    state = read_tensor_file(path)
    keys = [key for key, value in state.items() if isinstance(key, str) and isinstance(value, Tensor)]
    if not keys or len(keys) != len(state):
        raise CheckpointError(f"tiny VAE {path.name} holds no named tensors; {_WHAT_TO_GIVE}")
    if any(key.split(".")[1:2] == ["layers"] for key in keys):
        return diffusers_to_madebyollin(state)
    prefixes = {key.split(".", 1)[0] for key in keys}
    if prefixes <= set(HALVES) and all((key.split(".") + [""])[1].isdigit() for key in keys):
        return {
            half: {k[len(half) + 1 :]: t for k, t in state.items() if k.startswith(half + ".")}
            for half in prefixes
        }
    if not all(prefix.isdigit() for prefix in prefixes):
        first = next(key for key in keys if not key.split(".", 1)[0].isdigit())
        raise CheckpointError(
            f"tiny VAE {path.name} is not a TAESD file (it has keys like {first!r}, a full VAE's or "
            f"another model's); {_WHAT_TO_GIVE}"
        )
    # The decoder's index 0 is its Clamp, which has no weights; the encoder starts with a convolution.
    return {"encoder" if "0.weight" in state else "decoder": dict(state)}


def _config_of_decoder(weights: Mapping[str, Tensor]) -> TAESDConfig:
    """Latent channels (4 for SD, 16 for SD3's and FLUX's TAESDs) and width from the decoder's first
    convolution; the block counts are TAESD's, which the strict load then checks."""
    if "1.weight" not in weights:
        return TAESDConfig()  # the strict load names what is missing
    channels, latent_channels = weights["1.weight"].shape[:2]
    return TAESDConfig(latent_channels=int(latent_channels), channels=int(channels))


def _load_half(module: Any, weights: Mapping[str, Tensor], half: str) -> None:
    expected = module.state_dict()
    missing = [key for key in expected if key not in weights]
    unexpected = [key for key in weights if key not in expected]
    if missing or unexpected:
        detail = f"missing {', '.join(missing[:3])}" if missing else f"unexpected {', '.join(unexpected[:3])}"
        raise CheckpointError(f"tiny VAE {half} does not have TAESD's layers ({detail}); {_WHAT_TO_GIVE}")
    for key, tensor in weights.items():
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(
                f"tiny VAE {half} weight {key} has shape {list(tensor.shape)}, TAESD's is "
                f"{list(expected[key].shape)}; {_WHAT_TO_GIVE}"
            )
    module.load_state_dict({key: tensor.float() for key, tensor in weights.items()})
