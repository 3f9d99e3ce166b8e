"""Each component's diffusers `config.json` (diffusers for the UNet, VAE and scheduler; transformers for
the text encoder), read into our config dataclasses and written from them, so that diffusers and optimum
can read an exported folder. The fixed settings of SD 1.x are written out in full and, when reading, any
other value for them is refused.
"""

from collections.abc import Mapping
from typing import Any

from sdexport.checkpoints.errors import CheckpointError
from sdexport.models import CLIPTextConfig, OpenCLIPTextConfig, StableDiffusionConfig, UNetConfig, VAEConfig
from sdrun.samplers.consistency import TIMESTEP_SCALING
from sdrun.schedule import BETA_SCHEDULES, PREDICTION_TYPES, SD1_SCHEDULE

# The diffusers release whose config format is written.
DIFFUSERS_VERSION = "0.36.0"

# The settings of a SD 1.x UNet that have no counterpart in UNetConfig, at their diffusers defaults.
_UNET_FIXED: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": None,
    "addition_time_embed_dim": None,
    "attention_type": "default",
    "center_input_sample": False,
    "class_embed_type": None,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "cross_attention_norm": None,
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "mid_block_only_cross_attention": None,
    "mid_block_scale_factor": 1,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "projection_class_embeddings_input_dim": None,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "resnet_time_scale_shift": "default",
    "reverse_transformer_layers_per_block": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
}
_VAE_FIXED: dict[str, Any] = {
    "act_fn": "silu",
    "latents_mean": None,
    "latents_std": None,
    "mid_block_add_attention": True,
    "shift_factor": None,
    "use_post_quant_conv": True,
    "use_quant_conv": True,
}
# transformers' CLIPTextModel settings of CLIP ViT-L/14. Token ids as in SD 1.x's own text_encoder
# config: eos_token_id 2 makes transformers pool at the argmax id, as the original does.
_TEXT_FIXED: dict[str, Any] = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "hidden_act": "quick_gelu",
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
# PNDMScheduler as SD 1.x folders ship it: SD 1.x's training schedule as sdrun reads it, PLMS steps.
_SCHEDULER_FIXED: dict[str, Any] = {
    "_class_name": "PNDMScheduler",
    "_diffusers_version": DIFFUSERS_VERSION,
    "clip_sample": SD1_SCHEDULE["clip_sample"],
    "set_alpha_to_one": SD1_SCHEDULE["set_alpha_to_one"],
    "skip_prk_steps": True,
    "steps_offset": SD1_SCHEDULE["steps_offset"],
    "timestep_spacing": "leading",
    "trained_betas": SD1_SCHEDULE["trained_betas"],
}
# The distillation schedule's length of every published LCM/TCD model, as sdrun samples them.
_ORIGINAL_INFERENCE_STEPS = SD1_SCHEDULE["original_inference_steps"]


def _check_fixed(name: str, config: Mapping[str, Any], fixed: Mapping[str, Any]) -> None:
    """Refuse a config.json whose fixed settings differ from SD 1.x's (absent keys take the defaults)."""
    odd = []
    for key, expected in fixed.items():
        value = config.get(key, expected)
        values = value if isinstance(value, list) and not isinstance(expected, list) else [value]
        if any(v != expected for v in values):
            odd.append(f"{key}={value!r} (SD 1.x: {expected!r})")
    if odd:
        raise CheckpointError(
            f"{name}: settings this SD 1.x implementation does not have: {', '.join(odd[:4])}"
        )


def _single(name: str, key: str, value: Any) -> Any:
    """A per-block diffusers setting that SD 1.x keeps the same for every block."""
    if isinstance(value, list | tuple):
        if len(set(value)) != 1:
            raise CheckpointError(f"{name}: {key}={list(value)} varies per block; SD 1.x uses one value")
        return value[0]
    return value


def _head_channels(name: str, heads: Any, channels: list[int]) -> int | None:
    """The fixed head width of heads that grow with the blocks' channels (SD 2.x); None for one count."""
    if not isinstance(heads, list | tuple) or len(set(heads)) == 1:
        return None
    if len(heads) != len(channels):
        widths: set[int | None] = {None}
    else:
        pairs = zip(channels, heads, strict=True)
        widths = {c // h if isinstance(h, int) and h > 0 and c % h == 0 else None for c, h in pairs}
    if len(widths) != 1 or None in widths:
        raise CheckpointError(
            f"{name}: attention_head_dim {list(heads)} gives no one head width over block_out_channels "
            f"{channels} (SD 2.x: 64 channels a head)"
        )
    return widths.pop()


def unet_config_to_diffusers(config: UNetConfig, sample_size: int = 64) -> dict[str, Any]:
    """The diffusers `UNet2DConditionModel` config.json of `config`; `sample_size` is the latent side."""
    levels = range(len(config.channel_mult))
    attends = [2**level in config.attention_resolutions for level in levels]
    return {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        **_UNET_FIXED,
        # diffusers' name for the number of heads: per block for SD 2.x's fixed head width.
        "attention_head_dim": (
            [config.model_channels * mult // config.num_head_channels for mult in config.channel_mult]
            if config.num_head_channels
            else config.num_heads
        ),
        "block_out_channels": [config.model_channels * mult for mult in config.channel_mult],
        "cross_attention_dim": config.context_dim,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attends],
        "in_channels": config.in_channels,
        "layers_per_block": config.num_res_blocks,
        "norm_num_groups": config.norm_groups,
        "num_attention_heads": None,
        "out_channels": config.out_channels,
        "sample_size": sample_size,
        "time_cond_proj_dim": config.time_cond_proj_dim,
        "transformer_layers_per_block": config.transformer_depth,
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attends)],
        "upcast_attention": False,
        "use_linear_projection": config.use_linear_in_transformer,
    }


def unet_config_from_diffusers(config: Mapping[str, Any]) -> UNetConfig:
    """UNetConfig from a diffusers UNet config.json (absent keys take diffusers' defaults)."""
    name = "unet/config.json"
    _check_fixed(name, config, _UNET_FIXED)
    channels = list(config.get("block_out_channels", (320, 640, 1280, 1280)))
    down = list(config.get("down_block_types", ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]))
    up = list(config.get("up_block_types", ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3))
    known = {"CrossAttnDownBlock2D", "DownBlock2D"}
    if len(down) != len(channels) or not set(down) <= known:
        raise CheckpointError(f"{name}: down_block_types {down} is not a SD 1.x UNet's ({sorted(known)})")
    mirrored = [t.replace("Down", "Up") for t in reversed(down)]
    if up != mirrored:
        raise CheckpointError(
            f"{name}: up_block_types {up} does not mirror down_block_types (SD 1.x: {mirrored})"
        )
    base = channels[0]
    if any(c % base for c in channels):
        raise CheckpointError(f"{name}: block_out_channels {channels} are not multiples of the first")
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    head_channels = _head_channels(name, heads, channels)
    linear = config.get("use_linear_projection", False)
    if not isinstance(linear, bool):
        raise CheckpointError(f"{name}: use_linear_projection {linear!r} is not true or false")
    cond_dim = config.get("time_cond_proj_dim")
    if cond_dim is not None and (isinstance(cond_dim, bool) or not isinstance(cond_dim, int) or cond_dim < 1):
        raise CheckpointError(f"{name}: time_cond_proj_dim {cond_dim!r} is not a positive whole number")
    return UNetConfig(
        in_channels=config.get("in_channels", 4),
        out_channels=config.get("out_channels", 4),
        model_channels=base,
        attention_resolutions=tuple(
            2**level for level in reversed(range(len(down))) if down[level] == "CrossAttnDownBlock2D"
        ),
        num_res_blocks=_single(name, "layers_per_block", config.get("layers_per_block", 2)),
        channel_mult=tuple(c // base for c in channels),
        num_heads=8 if head_channels else _single(name, "attention_head_dim", heads),
        num_head_channels=head_channels,
        use_linear_in_transformer=linear,
        transformer_depth=_single(
            name, "transformer_layers_per_block", config.get("transformer_layers_per_block", 1)
        ),
        context_dim=config.get("cross_attention_dim", 1280),
        norm_groups=config.get("norm_num_groups", 32),
        time_cond_proj_dim=cond_dim,
    )


def vae_config_to_diffusers(config: VAEConfig, sample_size: int = 512) -> dict[str, Any]:
    """The diffusers `AutoencoderKL` config.json of `config` (with its latent scaling_factor)."""
    if config.embed_dim != config.z_channels:
        raise CheckpointError(
            f"the VAE's embed_dim {config.embed_dim} differs from z_channels {config.z_channels}, "
            "which diffusers' AutoencoderKL cannot express"
        )
    levels = len(config.ch_mult)
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        **_VAE_FIXED,
        "block_out_channels": [config.ch * mult for mult in config.ch_mult],
        "down_block_types": ["DownEncoderBlock2D"] * levels,
        "in_channels": config.in_channels,
        "latent_channels": config.z_channels,
        "layers_per_block": config.num_res_blocks,
        "norm_num_groups": config.norm_groups,
        "out_channels": config.out_channels,
        "sample_size": sample_size,
        "scaling_factor": config.scaling_factor,
        "up_block_types": ["UpDecoderBlock2D"] * levels,
    }


def vae_config_from_diffusers(config: Mapping[str, Any]) -> VAEConfig:
    """VAEConfig from a diffusers AutoencoderKL config.json (absent keys take diffusers' defaults)."""
    name = "vae/config.json"
    _check_fixed(name, config, _VAE_FIXED)
    channels = list(config.get("block_out_channels", (64,)))
    levels = len(channels)
    for key, block in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        types = list(config.get(key, [block]))
        if types != [block] * levels:
            raise CheckpointError(f"{name}: {key} {types} is not a SD 1.x VAE's ({levels} x {block})")
    base = channels[0]
    if any(c % base for c in channels):
        raise CheckpointError(f"{name}: block_out_channels {channels} are not multiples of the first")
    latent = config.get("latent_channels", 4)
    return VAEConfig(
        in_channels=config.get("in_channels", 3),
        out_channels=config.get("out_channels", 3),
        ch=base,
        ch_mult=tuple(c // base for c in channels),
        num_res_blocks=config.get("layers_per_block", 1),
        z_channels=latent,
        embed_dim=latent,
        norm_groups=config.get("norm_num_groups", 32),
        scaling_factor=config.get("scaling_factor", 0.18215),
    )


def text_encoder_config_to_diffusers(config: CLIPTextConfig | OpenCLIPTextConfig) -> dict[str, Any]:
    """The transformers `CLIPTextModel` config.json of `config`, as a diffusers folder holds it."""
    if isinstance(config, OpenCLIPTextConfig):
        return _open_clip_config_to_diffusers(config)
    return {
        **_TEXT_FIXED,
        "hidden_size": config.hidden_size,
        "intermediate_size": config.intermediate_size,
        "layer_norm_eps": config.layer_norm_eps,
        "max_position_embeddings": config.max_position_embeddings,
        "num_attention_heads": config.num_attention_heads,
        "num_hidden_layers": config.num_hidden_layers,
        "torch_dtype": "float32",
        "vocab_size": config.vocab_size,
    }


def _open_clip_config_to_diffusers(config: OpenCLIPTextConfig) -> dict[str, Any]:
    """The CLIPTextModel config.json of SD 2.x diffusers folders: GELU, the `layers - 1` blocks it runs."""
    return {
        **_TEXT_FIXED,
        "hidden_act": "gelu",
        "hidden_size": config.width,
        "intermediate_size": config.width * config.mlp_ratio,
        "layer_norm_eps": config.layer_norm_eps,
        "max_position_embeddings": config.context_length,
        "num_attention_heads": config.heads,
        "num_hidden_layers": config.layers - 1,
        "torch_dtype": "float32",
        "vocab_size": config.vocab_size,
    }


def _open_clip_config_from_diffusers(name: str, config: Mapping[str, Any]) -> OpenCLIPTextConfig:
    width = config.get("hidden_size", 512)
    ratio, rest = divmod(config.get("intermediate_size", 2048), width)
    if rest:
        raise CheckpointError(f"{name}: intermediate_size is not a multiple of hidden_size (SD 2.x: 4x)")
    return OpenCLIPTextConfig(
        vocab_size=config.get("vocab_size", 49408),
        context_length=config.get("max_position_embeddings", 77),
        width=width,
        heads=config.get("num_attention_heads", 8),
        layers=config.get("num_hidden_layers", 12) + 1,
        mlp_ratio=ratio,
        layer_norm_eps=config.get("layer_norm_eps", 1e-5),
    )


def text_encoder_config_from_diffusers(config: Mapping[str, Any]) -> CLIPTextConfig | OpenCLIPTextConfig:
    """CLIPTextConfig from a transformers CLIP text config.json (a full CLIP config: its text_config);
    with hidden_act gelu, SD 2.x's OpenCLIP text encoder as diffusers converted it."""
    name = "text_encoder/config.json"
    if config.get("model_type") == "clip":
        config = config.get("text_config") or {}
    architectures = config.get("architectures") or ["CLIPTextModel"]
    if architectures != ["CLIPTextModel"] and architectures != ["CLIPModel"]:
        raise CheckpointError(f"{name}: architectures {architectures}; SD 1.x uses CLIPTextModel")
    if config.get("hidden_act") == "gelu":
        return _open_clip_config_from_diffusers(name, config)
    _check_fixed(name, config, {"hidden_act": "quick_gelu"})
    # Absent keys take transformers' CLIPTextConfig defaults.
    return CLIPTextConfig(
        vocab_size=config.get("vocab_size", 49408),
        max_position_embeddings=config.get("max_position_embeddings", 77),
        hidden_size=config.get("hidden_size", 512),
        intermediate_size=config.get("intermediate_size", 2048),
        num_hidden_layers=config.get("num_hidden_layers", 12),
        num_attention_heads=config.get("num_attention_heads", 8),
        layer_norm_eps=config.get("layer_norm_eps", 1e-5),
    )


def scheduler_config_to_diffusers(config: StableDiffusionConfig) -> dict[str, Any]:
    """The scheduler_config.json of the training schedule (PNDM, as SD 1.x folders ship; LCMScheduler with
    the published distillation's settings for an LCM-distilled UNet, as LatentConsistencyModelPipeline
    folders ship, so that diffusers and optimum sample it with the scheduler it needs)."""
    scheduler = {
        **_SCHEDULER_FIXED,
        "beta_end": config.beta_end,
        "beta_schedule": config.beta_schedule,
        "beta_start": config.beta_start,
        "num_train_timesteps": config.num_train_timesteps,
        "prediction_type": config.prediction_type,
    }
    if config.unet.time_cond_proj_dim:
        scheduler.update(
            _class_name="LCMScheduler",
            original_inference_steps=_ORIGINAL_INFERENCE_STEPS,
            timestep_scaling=TIMESTEP_SCALING,
        )
    return scheduler


def schedule_from_diffusers(config: Mapping[str, Any]) -> dict[str, Any]:
    """The schedule fields of StableDiffusionConfig from a scheduler_config.json (absent: SD 1.x's)."""
    name = "scheduler/scheduler_config.json"
    defaults = StableDiffusionConfig()
    if config.get("trained_betas") is not None:
        raise CheckpointError(
            f"{name}: trained_betas are not supported; give beta_start, beta_end, beta_schedule"
        )
    if config.get("original_inference_steps", _ORIGINAL_INFERENCE_STEPS) != _ORIGINAL_INFERENCE_STEPS:
        # The folder sdexport writes carries the published distillation schedule's length only.
        raise CheckpointError(
            f"{name}: original_inference_steps {config['original_inference_steps']!r} is not supported; "
            f"sdexport builds consistency-distilled models of the published {_ORIGINAL_INFERENCE_STEPS}"
        )
    schedule = {
        "beta_start": float(config.get("beta_start", defaults.beta_start)),
        "beta_end": float(config.get("beta_end", defaults.beta_end)),
        "beta_schedule": config.get("beta_schedule", defaults.beta_schedule),
        "num_train_timesteps": int(config.get("num_train_timesteps", defaults.num_train_timesteps)),
        "prediction_type": config.get("prediction_type", defaults.prediction_type),
    }
    if schedule["beta_schedule"] not in BETA_SCHEDULES:
        raise CheckpointError(
            f"{name}: beta_schedule {schedule['beta_schedule']!r} is not one of {BETA_SCHEDULES}"
        )
    if schedule["prediction_type"] not in PREDICTION_TYPES:
        raise CheckpointError(
            f"{name}: prediction_type {schedule['prediction_type']!r} is not one of {PREDICTION_TYPES}"
        )
    return schedule
