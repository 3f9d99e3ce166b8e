"""The weight names of diffusers' SD 1.x/2.x layout, mapped to the original (CompVis) keys.

A diffusers key is renamed to the original key by its longest module prefix, from a table of module names
generated from the config (`module_map`); what follows the prefix is kept. The transformer blocks of the
UNet and the CLIP layers carry the same names on both sides, so one entry covers each of them whole. The
VAE's attention is linear in diffusers and 1x1 convolutions in the original: those weights gain two
trailing axes.
"""

from collections.abc import Mapping

import torch
from torch import Tensor

from sdexport.models import OpenCLIPTextConfig, StableDiffusionConfig, UNetConfig, VAEConfig
from sdexport.models.stable_diffusion import COMPONENT_PREFIXES, OPEN_CLIP_PREFIX

_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
_VAE_RESNET = {
    "norm1": "norm1",
    "conv1": "conv1",
    "norm2": "norm2",
    "conv2": "conv2",
    "conv_shortcut": "nin_shortcut",
}
# Current names, then those of diffusers < 0.14 that published folders still carry.
_VAE_ATTENTION = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
    "query": "q",
    "key": "k",
    "value": "v",
    "proj_attn": "proj_out",
}


def _add(table: dict[str, str], diffusers: str, original: str, parts: Mapping[str, str]) -> None:
    for diffusers_part, original_part in parts.items():
        table[f"{diffusers}.{diffusers_part}"] = f"{original}.{original_part}"


def _unet_module_map(config: UNetConfig) -> dict[str, str]:
    table = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    if config.time_cond_proj_dim:
        table["time_embedding.cond_proj"] = "time_embed_cond_proj"
    levels = len(config.channel_mult)
    block = 1
    for level in range(levels):
        attends = 2**level in config.attention_resolutions
        for i in range(config.num_res_blocks):
            _add(table, f"down_blocks.{level}.resnets.{i}", f"input_blocks.{block}.0", _UNET_RESNET)
            if attends:
                table[f"down_blocks.{level}.attentions.{i}"] = f"input_blocks.{block}.1"
            block += 1
        if level != levels - 1:
            table[f"down_blocks.{level}.downsamplers.0.conv"] = f"input_blocks.{block}.0.op"
            block += 1
    _add(table, "mid_block.resnets.0", "middle_block.0", _UNET_RESNET)
    table["mid_block.attentions.0"] = "middle_block.1"
    _add(table, "mid_block.resnets.1", "middle_block.2", _UNET_RESNET)
    block = 0
    for up, level in enumerate(reversed(range(levels))):
        attends = 2**level in config.attention_resolutions
        for i in range(config.num_res_blocks + 1):
            _add(table, f"up_blocks.{up}.resnets.{i}", f"output_blocks.{block}.0", _UNET_RESNET)
            if attends:
                table[f"up_blocks.{up}.attentions.{i}"] = f"output_blocks.{block}.1"
            block += 1
        if level != 0:
            # The upsampler ends the level's last block, after its transformer when it has one.
            table[f"up_blocks.{up}.upsamplers.0.conv"] = (
                f"output_blocks.{block - 1}.{2 if attends else 1}.conv"
            )
    return table


def _vae_module_map(config: VAEConfig) -> dict[str, str]:
    table = {name: name for name in ("quant_conv", "post_quant_conv")}
    for side in ("encoder", "decoder"):
        for name in ("conv_in", "conv_out"):
            table[f"{side}.{name}"] = f"{side}.{name}"
        table[f"{side}.conv_norm_out"] = f"{side}.norm_out"
        _add(table, f"{side}.mid_block.resnets.0", f"{side}.mid.block_1", _VAE_RESNET)
        _add(table, f"{side}.mid_block.attentions.0", f"{side}.mid.attn_1", _VAE_ATTENTION)
        _add(table, f"{side}.mid_block.resnets.1", f"{side}.mid.block_2", _VAE_RESNET)
    levels = len(config.ch_mult)
    for level in range(levels):
        for i in range(config.num_res_blocks):
            _add(
                table,
                f"encoder.down_blocks.{level}.resnets.{i}",
                f"encoder.down.{level}.block.{i}",
                _VAE_RESNET,
            )
        if level != levels - 1:
            table[f"encoder.down_blocks.{level}.downsamplers.0.conv"] = (
                f"encoder.down.{level}.downsample.conv"
            )
    # The decoder's up_blocks run from the lowest resolution; the original's `up` is indexed by level.
    for up, level in enumerate(reversed(range(levels))):
        for i in range(config.num_res_blocks + 1):
            _add(table, f"decoder.up_blocks.{up}.resnets.{i}", f"decoder.up.{level}.block.{i}", _VAE_RESNET)
        if level != 0:
            table[f"decoder.up_blocks.{up}.upsamplers.0.conv"] = f"decoder.up.{level}.upsample.conv"
    return table


_QKV = ("q_proj", "k_proj", "v_proj")


def _open_clip_module_map(config: OpenCLIPTextConfig) -> dict[str, str]:
    """transformers' CLIPTextModel -> open_clip's names (whole keys where the two differ in their last part).

    The attention keeps q_proj, k_proj and v_proj under `attn`; `diffusers_to_original` stacks them into
    open_clip's in_proj. diffusers' SD 2.x text encoder has the `layers - 1` blocks that SD 2.x runs.
    """
    table = {
        "text_model.embeddings.token_embedding": "token_embedding",
        "text_model.embeddings.position_embedding.weight": "positional_embedding",
        "text_model.embeddings.position_ids": "position_ids",
        "text_model.final_layer_norm": "ln_final",
    }
    parts = {"layer_norm1": "ln_1", "self_attn": "attn", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc"}
    for layer in range(config.layers - 1):
        _add(
            table,
            f"text_model.encoder.layers.{layer}",
            f"transformer.resblocks.{layer}",
            {**parts, "mlp.fc2": "mlp.c_proj"},
        )
    return table


def module_map(component: str, config: StableDiffusionConfig) -> dict[str, str]:
    """Diffusers module name -> original module name (with the component's prefix) for one component."""
    prefix = COMPONENT_PREFIXES.get(component, "")
    if component == "unet":
        table = _unet_module_map(config.unet)
    elif component == "vae":
        table = _vae_module_map(config.vae)
    elif component == "text_encoder" and isinstance(config.text_encoder, OpenCLIPTextConfig):
        table, prefix = _open_clip_module_map(config.text_encoder), OPEN_CLIP_PREFIX
    elif component == "text_encoder":
        table = {"text_model": "text_model"}
    else:
        raise ValueError(f"unknown component {component!r}")
    return {diffusers: prefix + original for diffusers, original in table.items()}


def _stack_in_proj(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """open_clip's attention holds q, k and v as one in_proj_weight / in_proj_bias: stack them."""
    stacked = dict(state)
    for key in state:
        module, name, kind = key.rsplit(".", 2)
        parts = [f"{module}.{projection}.{kind}" for projection in _QKV]
        if name == _QKV[0] and all(part in stacked for part in parts):
            stacked[f"{module}.in_proj_{kind}"] = torch.cat([stacked.pop(part) for part in parts])
    return stacked


def diffusers_to_original(
    component: str, state_dict: Mapping[str, Tensor], config: StableDiffusionConfig
) -> tuple[dict[str, Tensor], list[str]]:
    """One component's diffusers weights under original keys, and the diffusers keys that have none."""
    table = module_map(component, config)
    converted: dict[str, Tensor] = {}
    unmapped: list[str] = []
    for key, tensor in state_dict.items():
        parts = key.split(".")
        for split in range(len(parts), 0, -1):
            module = table.get(".".join(parts[:split]))
            if module is not None:
                original = ".".join([module, *parts[split:]])
                if component == "vae" and ".mid.attn_1." in original and tensor.ndim == 2:
                    tensor = tensor[:, :, None, None]
                converted[original] = tensor
                break
        else:
            unmapped.append(key)
    if component == "text_encoder" and isinstance(config.text_encoder, OpenCLIPTextConfig):
        converted = _stack_in_proj(converted)
    return converted, unmapped
