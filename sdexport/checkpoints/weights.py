"""From weights under the original keys to a built StableDiffusion: drop what the networks do not use,
check the weights against the config, and build the modules in float32 around them."""

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from sdexport.checkpoints.errors import CheckpointError, first_names
from sdexport.models import OpenCLIPTextConfig, StableDiffusion, StableDiffusionConfig
from sdexport.models.open_clip import unused_keys
from sdexport.models.stable_diffusion import COMPONENT_PREFIXES, OPEN_CLIP_PREFIX

# Buffers of the original LatentDiffusion's noise schedule (DDPM.register_schedule) and its log-variance.
_SCHEDULE_BUFFERS = frozenset(
    {
        "betas",
        "alphas_cumprod",
        "alphas_cumprod_prev",
        "sqrt_alphas_cumprod",
        "sqrt_one_minus_alphas_cumprod",
        "log_one_minus_alphas_cumprod",
        "sqrt_recip_alphas_cumprod",
        "sqrt_recipm1_alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
        "posterior_mean_coef1",
        "posterior_mean_coef2",
        "logvar",
    }
)
# CLIP's position ids: a buffer in transformers (saved by older versions), computed in our model.
_POSITION_IDS = COMPONENT_PREFIXES["text_encoder"] + "text_model.embeddings.position_ids"


def is_unused_entry(key: str) -> bool:
    """Entries real files carry that no network uses: the schedule, EMA bookkeeping, position ids."""
    return key in _SCHEDULE_BUFFERS or key.startswith("model_ema.") or key == _POSITION_IDS


def split_unused(state: Mapping[str, Any]) -> tuple[dict[str, Tensor], list[str]]:
    """The tensors a network may use, and the names of the rest (unused entries and non-tensors)."""
    kept: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if isinstance(value, Tensor) and not is_unused_entry(key):
            kept[key] = value
        else:
            dropped.append(key)
    return kept, dropped


def dtype_name(tensors: Iterable[Tensor]) -> str:
    """'float16', or 'float16+float32' for mixed files: the floating types the weights were stored in."""
    counts = Counter(str(t.dtype).removeprefix("torch.") for t in tensors if t.is_floating_point())
    return "+".join(sorted(counts)) if counts else "none"


# Sizes the config fixes that one tensor shows directly: (config field, tensor key, axis).
_SIZES = (
    ("unet.in_channels", "model.diffusion_model.input_blocks.0.0.weight", 1),
    ("unet.model_channels", "model.diffusion_model.input_blocks.0.0.weight", 0),
    ("unet.out_channels", "model.diffusion_model.out.2.weight", 0),
    ("unet.context_dim", "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight", 1),
    ("vae.in_channels", "first_stage_model.encoder.conv_in.weight", 1),
    ("vae.ch", "first_stage_model.encoder.conv_in.weight", 0),
    ("vae.out_channels", "first_stage_model.decoder.conv_out.weight", 0),
    ("vae.z_channels", "first_stage_model.post_quant_conv.weight", 0),
    ("vae.embed_dim", "first_stage_model.post_quant_conv.weight", 1),
    (
        "text_encoder.vocab_size",
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
        0,
    ),
    (
        "text_encoder.hidden_size",
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
        1,
    ),
    (
        "text_encoder.max_position_embeddings",
        "cond_stage_model.transformer.text_model.embeddings.position_embedding.weight",
        0,
    ),
    (
        "text_encoder.intermediate_size",
        "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
        0,
    ),
)
# Counts the config fixes that the numbering of the keys shows: (config field, key prefix, count of).
_COUNTS = (
    ("len(vae.ch_mult)", "first_stage_model.encoder.down.", lambda c: len(c.vae.ch_mult)),
    (
        "text_encoder.num_hidden_layers",
        "cond_stage_model.transformer.text_model.encoder.layers.",
        lambda c: c.text_encoder.num_hidden_layers,
    ),
)


def _config_value(config: StableDiffusionConfig, field: str) -> Any:
    component, name = field.split(".")
    return getattr(getattr(config, component), name)


def check_sizes(state: Mapping[str, Tensor], config: StableDiffusionConfig, config_source: str) -> None:
    """Refuse a config whose main sizes differ from those the tensors show, naming each difference."""
    differences = []
    for field, key, axis in _SIZES:
        tensor = state.get(key)
        if tensor is not None and tensor.ndim > axis and tensor.shape[axis] != _config_value(config, field):
            differences.append(f"{field} {_config_value(config, field)} vs {tensor.shape[axis]}")
    for field, prefix, expected in _COUNTS:
        indices = {key[len(prefix) :].split(".")[0] for key in state if key.startswith(prefix)}
        if indices and len(indices) != expected(config):
            differences.append(f"{field} {expected(config)} vs {len(indices)}")
    if differences:
        raise CheckpointError(
            f"the config ({config_source}) does not fit the weights (config vs weights): "
            f"{'; '.join(differences[:4])}; give the model's sizes with --config (v1-inference.yaml layout)"
        )


def build_model(
    state: Mapping[str, Tensor], config: StableDiffusionConfig, config_source: str
) -> StableDiffusion:
    """StableDiffusion(config) holding `state` in float32, in eval mode without gradients.

    Raises CheckpointError naming the first missing, unexpected and mis-shaped tensors.
    """
    if isinstance(config.text_encoder, OpenCLIPTextConfig):
        unused = set(unused_keys(list(state), config.text_encoder, OPEN_CLIP_PREFIX))
        state = {key: tensor for key, tensor in state.items() if key not in unused}
    check_sizes(state, config, config_source)
    # Built on the meta device: every parameter is then taken from `state`, none initialised in vain.
    with torch.device("meta"):
        model = StableDiffusion(config)
    expected = {key: tuple(t.shape) for key, t in model.state_dict().items()}
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    misshaped = [
        f"{key} {list(state[key].shape)} (config: {list(shape)})"
        for key, shape in expected.items()
        if key in state and tuple(state[key].shape) != shape
    ]
    problems = [
        f"{len(names)} {kind}: {first_names(names)}"
        for kind, names in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped))
        if names
    ]
    if problems:
        raise CheckpointError(f"the weights do not fit the config ({config_source}): {'; '.join(problems)}")
    model.load_state_dict(
        {key: t.to(torch.float32).contiguous() for key, t in state.items()}, strict=True, assign=True
    )
    return model.eval().requires_grad_(False)
