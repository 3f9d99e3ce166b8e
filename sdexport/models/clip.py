"""CLIP ViT-L/14 text encoder (Radford et al. 2021), as used by Stable Diffusion 1.x.

Attribute names mirror the original checkpoint keys under `cond_stage_model.transformer.`.
"""

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sdexport.models.attention import attention, causal_mask


@dataclass
class CLIPTextConfig:
    vocab_size: int = 49408
    max_position_embeddings: int = 77
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    layer_norm_eps: float = 1e-5
    # AUTOMATIC1111's "Clip skip": the output of the N-th layer from the last (1, the last, is SD 1.x's),
    # through the final layer norm; the layers after it do not run. diffusers counts one less: its
    # `clip_skip=1` (hidden_states[-2]) is this 2.
    clip_skip: int = 1


class CLIPAttention(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        dim = config.hidden_size
        self.heads = config.num_attention_heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        out = attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, mask)
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        x = self.fc1(x)
        # QuickGELU, the approximation CLIP was trained with.
        return self.fc2(x * torch.sigmoid(1.702 * x))


class CLIPEncoderLayer(nn.Module):
    """Pre-LN transformer layer."""

    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.self_attn = CLIPAttention(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, x: Tensor, mask: Tensor, depth: int) -> Tensor:
        """The output of the first `depth` layers."""
        for layer in self.layers[:depth]:
            x = layer(x, mask)
        return x


class CLIPEmbeddings(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)

    def forward(self, input_ids: Tensor) -> Tensor:
        # Positions are computed, not a buffer, so checkpoints with or without `position_ids` load alike.
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        return self.token_embedding(input_ids) + self.position_embedding(positions)


class CLIPTextTransformer(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.embeddings = CLIPEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: Tensor, clip_skip: int = 1) -> tuple[Tensor, Tensor]:
        x = self.embeddings(input_ids)
        depth = len(self.encoder.layers) - (clip_skip - 1)
        x = self.encoder(x, causal_mask(x.shape[1], x.dtype, x.device), depth)
        last_hidden_state = self.final_layer_norm(x)
        # The end-of-text token has the largest id in CLIP's vocabulary, so argmax finds it.
        batch = torch.arange(last_hidden_state.shape[0], device=x.device)
        pooled_output = last_hidden_state[batch, input_ids.argmax(dim=-1)]
        return last_hidden_state, pooled_output


class CLIPTextModel(nn.Module):
    def __init__(self, config: CLIPTextConfig):
        super().__init__()
        self.config = config
        self.text_model = CLIPTextTransformer(config)

    def forward(self, input_ids: Tensor) -> tuple[Tensor, Tensor]:
        """input_ids [B, L] -> (last_hidden_state [B, L, C], pooled_output [B, C]), both taken at the
        layer `config.clip_skip` says."""
        return self.text_model(input_ids, self.config.clip_skip)

    @property
    def token_embedding(self) -> nn.Embedding:
        """The token table, where every text encoder has one (OpenCLIPTextModel's is an attribute)."""
        return self.text_model.embeddings.token_embedding
