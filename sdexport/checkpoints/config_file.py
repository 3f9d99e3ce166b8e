"""The model config file: YAML in the layout of the original `v1-inference.yaml`, so that file itself works.

Read: `model.params` (schedule, `scale_factor`, `parameterization`; `use_ema` by `read_use_ema`),
`unet_config.params`, `first_stage_config.params` (with `ddconfig`). Extensions for what the original
leaves implicit: `norm_groups` in `unet_config.params` and `ddconfig` (the original fixes 32), and the
text encoder's sizes in `cond_stage_config.params` (vocab_size, max_length, hidden_size or width, layers,
heads, intermediate_size, layer_norm_eps), and a top-level `generation_defaults:` section (the settings the
model is meant to be sampled at; see sdrun.defaults). A key that is absent takes the SD 1.x value.
"""

from pathlib import Path
from typing import Any

import yaml

from sdexport.checkpoints.errors import CheckpointError
from sdexport.checkpoints.family import INPAINTING_IN_CHANNELS, unsupported
from sdexport.models import CLIPTextConfig, OpenCLIPTextConfig, StableDiffusionConfig, UNetConfig, VAEConfig
from sdrun.defaults import GenerationDefaults
from sdrun.errors import SdrunError
from sdrun.folder_layout import GENERATION_DEFAULTS_KEY

# The original's beta schedule names -> diffusers' (the original's "linear" is linear in sqrt(beta)).
_SCHEDULES = {"linear": "scaled_linear", "sqrt_linear": "linear", "cosine": "squaredcos_cap_v2"}
_PARAMETERIZATIONS = {"eps": "epsilon", "v": "v_prediction"}
_TARGETS = {
    "model": "ldm.models.diffusion.ddpm.LatentDiffusion",
    "inpainting_model": "ldm.models.diffusion.ddpm.LatentInpaintDiffusion",
    "unet": "ldm.modules.diffusionmodules.openaimodel.UNetModel",
    "vae": "ldm.models.autoencoder.AutoencoderKL",
    "text": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
    "open_clip": "ldm.modules.encoders.modules.FrozenOpenCLIPEmbedder",
}
# The official v2-inference-v.yaml of the 768-pixel SD 2.x v-prediction models says image_size 64 (the
# original does not use it at inference): with parameterization v, that value is read as their 96.
_SD2_V_IMAGE_SIZES = {64: 96}


def find_config(checkpoint: Path, explicit: Path | None) -> Path | None:
    """The config file of a single-file checkpoint: `explicit`, else `<stem>.yaml` beside it, else None."""
    if explicit is not None:
        if not explicit.is_file():
            raise CheckpointError(f"config file {explicit} does not exist")
        return explicit
    sibling = checkpoint.with_suffix(".yaml")
    return sibling if sibling.is_file() else None


class _Section:
    """One mapping of the YAML document, reading typed values with errors that name the full key."""

    def __init__(self, path: Path, where: str, data: Any):
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise CheckpointError(f"config {path}: {where} must be a mapping, got {type(data).__name__}")
        self.path, self.where, self.data = path, where, data

    def child(self, key: str) -> "_Section":
        return _Section(self.path, f"{self.where}.{key}", self.data.get(key))

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def _bad(self, key: str, kind: str) -> CheckpointError:
        return CheckpointError(
            f"config {self.path}: {self.where}.{key} must be {kind}, got {self.data[key]!r}"
        )

    def get_int(self, key: str, default: int) -> int:
        value = self.data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise self._bad(key, "a positive integer")
        return value

    def get_float(self, key: str, default: float) -> float:
        value = self.data.get(key, default)
        # YAML 1.1 reads "1e-5" (no dot) as a string.
        try:
            number = (
                float(value) if isinstance(value, str | int | float) and not isinstance(value, bool) else 0.0
            )
        except ValueError:
            number = 0.0
        if not number > 0:
            raise self._bad(key, "a positive number")
        return number

    def get_ints(self, key: str, default: tuple[int, ...]) -> tuple[int, ...]:
        value = self.data.get(key, list(default))
        if not isinstance(value, list) or not value or not all(type(v) is int and v > 0 for v in value):
            raise self._bad(key, "a list of positive integers")
        return tuple(value)


def _read_document(path: Path) -> tuple[dict[str, Any], _Section]:
    """The YAML document of a config file and its `model.params` section."""
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise CheckpointError(f"cannot read config {path}: {error.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise CheckpointError(f"config {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    model = document.get("model") if isinstance(document, dict) else None
    if not isinstance(model, dict) or "params" not in model:
        raise CheckpointError(f"config {path} has no model.params (expected the layout of v1-inference.yaml)")
    return document, _Section(path, "model.params", model["params"])


def read_use_ema(path: Path) -> bool | None:
    """`model.params.use_ema`: whether the model is sampled with its EMA UNet weights; None if not said."""
    _, params = _read_document(path)
    value = params.raw("use_ema")
    if value is not None and not isinstance(value, bool):
        raise CheckpointError(f"config {path}: model.params.use_ema must be true or false, got {value!r}")
    return value


def read_config_yaml(path: Path) -> StableDiffusionConfig:
    """StableDiffusionConfig from a config file in the `v1-inference.yaml` layout (see the module doc)."""
    document, params = _read_document(path)
    if params.has("network_config") or params.has("conditioner_config"):
        raise unsupported(f"config {path} is in the SDXL (sgm) layout")
    defaults = StableDiffusionConfig()
    schedule = params.raw("beta_schedule", "linear")
    if schedule not in _SCHEDULES:
        raise CheckpointError(f"config {path}: beta_schedule {schedule!r} is not one of {sorted(_SCHEDULES)}")
    parameterization = params.raw("parameterization", "eps")
    if parameterization not in _PARAMETERIZATIONS:
        raise CheckpointError(f"config {path}: parameterization {parameterization!r} is not 'eps' or 'v'")
    unet = _read_unet(params.child("unet_config").child("params"))
    text_encoder = _read_text_encoder(params.child("cond_stage_config"), unet)
    sample_size = params.get_int("image_size", defaults.sample_size)
    if isinstance(text_encoder, OpenCLIPTextConfig) and parameterization == "v":
        sample_size = _SD2_V_IMAGE_SIZES.get(sample_size, sample_size)
    return StableDiffusionConfig(
        unet=unet,
        vae=_read_vae(params.child("first_stage_config").child("params"), params),
        text_encoder=text_encoder,
        beta_start=params.get_float("linear_start", defaults.beta_start),
        beta_end=params.get_float("linear_end", defaults.beta_end),
        beta_schedule=_SCHEDULES[schedule],
        num_train_timesteps=params.get_int("timesteps", defaults.num_train_timesteps),
        prediction_type=_PARAMETERIZATIONS[parameterization],
        sample_size=sample_size,
        generation_defaults=_read_generation_defaults(path, document.get("generation_defaults")),
    )


def _read_generation_defaults(path: Path, section: object) -> dict[str, Any]:
    """The optional top-level `generation_defaults:` section (an sdexport extension)."""
    if section is None:
        return {}
    try:
        GenerationDefaults.from_manifest({GENERATION_DEFAULTS_KEY: section})
    except SdrunError as error:
        raise CheckpointError(f"config {path}: {error}") from None
    return dict(section)


def _read_unet(unet: _Section) -> UNetConfig:
    where = f"config {unet.path}"
    linear = unet.raw("use_linear_in_transformer", False)
    if not isinstance(linear, bool):
        raise CheckpointError(f"{where}: use_linear_in_transformer must be true or false, got {linear!r}")
    if unet.raw("num_classes") is not None or unet.raw("adm_in_channels") is not None:
        raise unsupported(f"{where} describes a class-conditioned UNet (SDXL: num_classes / adm_in_channels)")
    d = UNetConfig()
    return UNetConfig(
        in_channels=unet.get_int("in_channels", d.in_channels),
        out_channels=unet.get_int("out_channels", d.out_channels),
        model_channels=unet.get_int("model_channels", d.model_channels),
        attention_resolutions=unet.get_ints("attention_resolutions", d.attention_resolutions),
        num_res_blocks=unet.get_int("num_res_blocks", d.num_res_blocks),
        channel_mult=unet.get_ints("channel_mult", d.channel_mult),
        num_heads=unet.get_int("num_heads", d.num_heads),
        transformer_depth=unet.get_int("transformer_depth", d.transformer_depth),
        context_dim=unet.get_int("context_dim", d.context_dim),
        norm_groups=unet.get_int("norm_groups", d.norm_groups),
        # -1, the original's default, means heads of model width / num_heads channels.
        num_head_channels=(
            None if unet.raw("num_head_channels", -1) == -1 else unet.get_int("num_head_channels", 64)
        ),
        use_linear_in_transformer=linear,
    )


def _read_vae(vae: _Section, model: _Section) -> VAEConfig:
    dd = vae.child("ddconfig")
    if dd.raw("double_z", True) is not True or dd.raw("attn_resolutions", []) not in ([], None):
        raise unsupported(
            f"config {vae.path}: a first stage with double_z false or attn_resolutions (SD 1.x: true, [])"
        )
    d = VAEConfig()
    return VAEConfig(
        in_channels=dd.get_int("in_channels", d.in_channels),
        out_channels=dd.get_int("out_ch", d.out_channels),
        ch=dd.get_int("ch", d.ch),
        ch_mult=dd.get_ints("ch_mult", d.ch_mult),
        num_res_blocks=dd.get_int("num_res_blocks", d.num_res_blocks),
        z_channels=dd.get_int("z_channels", d.z_channels),
        embed_dim=vae.get_int("embed_dim", d.embed_dim),
        norm_groups=dd.get_int("norm_groups", d.norm_groups),
        scaling_factor=model.get_float("scale_factor", d.scaling_factor),
    )


def _read_text_encoder(cond: _Section, unet: UNetConfig) -> CLIPTextConfig | OpenCLIPTextConfig:
    """CLIP ViT-L, or OpenCLIP when the target names it or, without a target, for a SD 2.x UNet."""
    target = str(cond.raw("target", ""))
    if "OpenCLIP" in target or (not target and unet.use_linear_in_transformer):
        return _read_open_clip(cond, named=bool(target))
    text = cond.child("params")
    if text.raw("layer", "last") != "last":
        raise CheckpointError(
            f"config {cond.path}: cond_stage_config layer {text.raw('layer')!r} is not supported "
            "(SD 1.x uses 'last')"
        )
    if text.has("width") and text.has("hidden_size") and text.raw("width") != text.raw("hidden_size"):
        raise CheckpointError(
            f"config {cond.path}: cond_stage_config gives both width and hidden_size, differently"
        )
    d = CLIPTextConfig()
    return CLIPTextConfig(
        vocab_size=text.get_int("vocab_size", d.vocab_size),
        max_position_embeddings=text.get_int("max_length", d.max_position_embeddings),
        hidden_size=text.get_int("width" if text.has("width") else "hidden_size", d.hidden_size),
        intermediate_size=text.get_int("intermediate_size", d.intermediate_size),
        num_hidden_layers=text.get_int("layers", d.num_hidden_layers),
        num_attention_heads=text.get_int("heads", d.num_attention_heads),
        layer_norm_eps=text.get_float("layer_norm_eps", d.layer_norm_eps),
    )


def _read_open_clip(cond: _Section, named: bool) -> OpenCLIPTextConfig:
    """FrozenOpenCLIPEmbedder's params (`layer`, its default "last" when the target is named; `arch`),
    and the sizes in open_clip's names (vocab_size, max_length, width, heads, layers, layer_norm_eps)."""
    text = cond.child("params")
    layer = text.raw("layer", "last" if named else "penultimate")
    if layer != "penultimate":
        raise CheckpointError(
            f"config {cond.path}: cond_stage_config layer {layer!r} is not supported "
            "(SD 2.x uses 'penultimate'; write layer: penultimate)"
        )
    if text.raw("arch", "ViT-H-14") != "ViT-H-14":
        raise unsupported(
            f"config {cond.path}: an OpenCLIP text encoder {text.raw('arch')!r} (SD 2.x: ViT-H-14)"
        )
    if text.get_int("layers", 2) < 2:
        raise CheckpointError(f"config {cond.path}: cond_stage_config layers must be 2 or more (penultimate)")
    d = OpenCLIPTextConfig()
    return OpenCLIPTextConfig(
        vocab_size=text.get_int("vocab_size", d.vocab_size),
        context_length=text.get_int("max_length", d.context_length),
        width=text.get_int("width", d.width),
        heads=text.get_int("heads", d.heads),
        layers=text.get_int("layers", d.layers),
        layer_norm_eps=text.get_float("layer_norm_eps", d.layer_norm_eps),
    )


def _text_encoder_section(text: CLIPTextConfig | OpenCLIPTextConfig) -> dict[str, Any]:
    if isinstance(text, OpenCLIPTextConfig):
        params: dict[str, Any] = {
            "layer": "penultimate",
            "vocab_size": text.vocab_size,
            "max_length": text.context_length,
            "width": text.width,
            "heads": text.heads,
            "layers": text.layers,
            "layer_norm_eps": text.layer_norm_eps,
        }
        return {"target": _TARGETS["open_clip"], "params": params}
    params = {
        "vocab_size": text.vocab_size,
        "max_length": text.max_position_embeddings,
        "hidden_size": text.hidden_size,
        "intermediate_size": text.intermediate_size,
        "layers": text.num_hidden_layers,
        "heads": text.num_attention_heads,
        "layer_norm_eps": text.layer_norm_eps,
    }
    return {"target": _TARGETS["text"], "params": params}


def config_to_yaml_dict(config: StableDiffusionConfig) -> dict[str, Any]:
    """`config` as the `v1-inference.yaml` document (with the extensions that differ from SD 1.x written)."""
    unet, vae, text = config.unet, config.vae, config.text_encoder
    inpainting = unet.in_channels == INPAINTING_IN_CHANNELS
    schedules = {diffusers: original for original, diffusers in _SCHEDULES.items()}
    parameterizations = {diffusers: original for original, diffusers in _PARAMETERIZATIONS.items()}
    if config.beta_schedule not in schedules or config.prediction_type not in parameterizations:
        raise CheckpointError(
            f"schedule {config.beta_schedule!r} / prediction {config.prediction_type!r} "
            "has no name in the original YAML layout"
        )
    unet_params: dict[str, Any] = {
        "in_channels": unet.in_channels,
        "out_channels": unet.out_channels,
        "model_channels": unet.model_channels,
        "attention_resolutions": list(unet.attention_resolutions),
        "num_res_blocks": unet.num_res_blocks,
        "channel_mult": list(unet.channel_mult),
        "num_heads": unet.num_heads,
        "use_spatial_transformer": True,
        "transformer_depth": unet.transformer_depth,
        "context_dim": unet.context_dim,
    }
    if unet.num_head_channels:
        del unet_params["num_heads"]
        unet_params.update(num_head_channels=unet.num_head_channels, use_linear_in_transformer=True)
    if unet.use_linear_in_transformer != bool(unet.num_head_channels):
        raise CheckpointError("the original YAML layout here pairs linear projections with num_head_channels")
    ddconfig: dict[str, Any] = {
        "double_z": True,
        "z_channels": vae.z_channels,
        "in_channels": vae.in_channels,
        "out_ch": vae.out_channels,
        "ch": vae.ch,
        "ch_mult": list(vae.ch_mult),
        "num_res_blocks": vae.num_res_blocks,
        "attn_resolutions": [],
    }
    for params, value in ((unet_params, unet.norm_groups), (ddconfig, vae.norm_groups)):
        if value != 32:
            params["norm_groups"] = value
    document: dict[str, Any] = {
        "model": {
            "target": _TARGETS["inpainting_model" if inpainting else "model"],
            "params": {
                # hybrid: the mask and masked-image latents concatenated to the input, the text by attention.
                "conditioning_key": "hybrid" if inpainting else "crossattn",
                "linear_start": config.beta_start,
                "linear_end": config.beta_end,
                "beta_schedule": schedules[config.beta_schedule],
                "timesteps": config.num_train_timesteps,
                "parameterization": parameterizations[config.prediction_type],
                "image_size": config.sample_size,
                "scale_factor": vae.scaling_factor,
                "unet_config": {"target": _TARGETS["unet"], "params": unet_params},
                "first_stage_config": {
                    "target": _TARGETS["vae"],
                    "params": {"embed_dim": vae.embed_dim, "ddconfig": ddconfig},
                },
                "cond_stage_config": _text_encoder_section(text),
            },
        }
    }
    if config.generation_defaults:
        document["generation_defaults"] = dict(config.generation_defaults)
    return document


def write_config_yaml(config: StableDiffusionConfig, path: Path) -> None:
    """Write `config` as a config file that `read_config_yaml` (and `--config`) reads back."""
    header = (
        "# Stable Diffusion model config in the layout of the original v1-inference.yaml.\n"
        "# sdexport extensions: norm_groups (when not 32), cond_stage_config.params (text encoder sizes).\n"
    )
    body = yaml.safe_dump(config_to_yaml_dict(config), sort_keys=False, default_flow_style=None)
    path.write_text(header + body, encoding="utf-8")
