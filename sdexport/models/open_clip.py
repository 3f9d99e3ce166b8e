"""OpenCLIP ViT-H/14 text encoder (Cherti et al. 2023; the CLIP architecture of Radford et al. 2021), as
Stable Diffusion 2.x uses it: the penultimate layer's hidden states through the final layer norm
(FrozenOpenCLIPEmbedder with layer="penultimate").

Attribute names mirror the original checkpoint keys under `cond_stage_model.model.`. The last residual
block never reaches SD 2.x's output, so it is not built: a checkpoint's copy of it is left out when
loading (`unused_keys`), as diffusers' conversion leaves it out (its CLIPTextModel has `layers - 1`).
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sdexport.models.attention import attention, causal_mask

# SD 2.x pads prompts with token 0 ("!"), not with the end token as SD 1.x does (open_clip.tokenize).
PAD_TOKEN = "!"
# Entries that SD 2.x does not use: the contrastive head of the original text model, and transformers'
# position ids (a buffer that diffusers folders may carry; positions are computed here).
UNUSED_ENTRIES = ("text_projection", "logit_scale", "position_ids")


@dataclass
class OpenCLIPTextConfig:
    """Sizes in open_clip's names; `layers` counts the checkpoint's blocks, of which `layers - 1` run."""

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 1024
    heads: int = 16
    layers: int = 24
    mlp_ratio: int = 4
    layer_norm_eps: float = 1e-5

    # The names by which the rest of sdexport reads any text encoder's config.
    @property
    def max_position_embeddings(self) -> int:
        return self.context_length

    @property
    def hidden_size(self) -> int:
        return self.width


def unused_keys(keys: list[str], config: OpenCLIPTextConfig, prefix: str) -> list[str]:
    """The keys under `prefix` of a full OpenCLIP text model that SD 2.x's output does not depend on."""
    last_block = f"{prefix}transformer.resblocks.{config.layers - 1}."
    unused = {prefix + name for name in UNUSED_ENTRIES}
    return [key for key in keys if key in unused or key.startswith(last_block)]


class MultiheadAttention(nn.Module):
    """nn.MultiheadAttention's parameters (q, k, v stacked in in_proj), computed with our attention."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        # Initialised as nn.MultiheadAttention does (loading replaces them; tests run random models).
        self.in_proj_weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(3 * width, width)))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        q, k, v = nn.functional.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        return self.out_proj(attention(q, k, v, self.heads, mask))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN transformer layer."""

    def __init__(self, config: OpenCLIPTextConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.attn = MultiheadAttention(config.width, config.heads)
        self.ln_2 = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.mlp = MLP(config.width, config.width * config.mlp_ratio)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, config: OpenCLIPTextConfig):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(config) for _ in range(config.layers - 1))

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        for block in self.resblocks:
            x = block(x, mask)
        return x


class OpenCLIPTextModel(nn.Module):
    def __init__(self, config: OpenCLIPTextConfig):
        super().__init__()
        if config.layers < 2:
            raise ValueError(
                "an OpenCLIP text model for SD 2.x needs 2 layers or more (it uses the penultimate)"
            )
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(
            nn.init.normal_(torch.empty(config.context_length, config.width), std=0.01)
        )
        self.transformer = Transformer(config)
        self.ln_final = nn.LayerNorm(config.width, eps=config.layer_norm_eps)

    def forward(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """input_ids [B, L] -> (last_hidden_state [B, L, C], pooled_output [B, C]).

        last_hidden_state: the penultimate layer through ln_final, what SD 2.x's UNet attends to.
        pooled_output: its row at the end token, as transformers' CLIPTextModel pools the same states.
        """
        x = self.token_embedding(input_ids) + self.positional_embedding[: input_ids.shape[1]]
        x = self.transformer(x, causal_mask(x.shape[1], x.dtype, x.device))
        last_hidden_state = self.ln_final(x)
        # The end-of-text token has the largest id in CLIP's vocabulary (the padding, 0, the smallest).
        batch = torch.arange(last_hidden_state.shape[0], device=x.device)
        pooled_output = last_hidden_state[batch, input_ids.argmax(dim=-1)]
        return last_hidden_state, pooled_output
