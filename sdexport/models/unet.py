"""The latent-diffusion UNet of Stable Diffusion 1.x (Rombach et al. 2022, sec. 3.3; Ho et al. 2020 for
the noise-prediction UNet it extends).

Attribute names mirror the original checkpoint keys under `model.diffusion_model.`. Latent sizes need
not be multiples of the total downsampling factor: every upsampling targets the spatial size of the skip
connection it is concatenated with.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sdexport.models.attention import attention


@dataclass
class UNetConfig:
    in_channels: int = 4
    out_channels: int = 4
    model_channels: int = 320
    attention_resolutions: tuple[int, ...] = (4, 2, 1)
    num_res_blocks: int = 2
    channel_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_heads: int = 8
    transformer_depth: int = 1
    context_dim: int = 768
    norm_groups: int = 32
    # SD 2.x: heads of this many channels each (the original's num_head_channels; num_heads is then
    # unused), and Linear in place of the 1x1 convolutions around each transformer.
    num_head_channels: int | None = None
    use_linear_in_transformer: bool = False
    # LCM-distilled UNets (Luo et al. 2023, sec. 4.2): the width of the guidance-scale embedding that
    # conditions the timestep embedding; None for SD 1.x, which has no such input.
    time_cond_proj_dim: int | None = None


def timestep_embedding(timesteps: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [B] -> [B, dim], cosines first (Vaswani et al. 2017, sec. 3.5)."""
    half = dim // 2
    steps = torch.arange(half, dtype=torch.float32, device=timesteps.device)
    freqs = torch.exp(steps * (-math.log(max_period) / half))
    args = timesteps.to(torch.float32)[:, None] * freqs[None, :]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = F.pad(embedding, (0, 1))
    return embedding


class ResBlock(nn.Module):
    """Residual block conditioned on the timestep embedding (added after the first convolution)."""

    def __init__(self, channels: int, emb_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.in_layers = nn.Sequential(
            nn.GroupNorm(groups, channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, out_channels))
        self.out_layers = nn.Sequential(
            nn.GroupNorm(groups, out_channels),
            nn.SiLU(),
            nn.Dropout(0.0),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip_connection = (
            nn.Conv2d(channels, out_channels, 1) if channels != out_channels else nn.Identity()
        )

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class CrossAttention(nn.Module):
    """Multi-head attention from `x` to `context` (to `x` itself when context is None)."""

    def __init__(self, query_dim: int, context_dim: int, heads: int, dim_head: int):
        super().__init__()
        inner = heads * dim_head
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(0.0))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        context = x if context is None else context
        return self.to_out(attention(self.to_q(x), self.to_k(context), self.to_v(context), self.heads))


class GEGLU(nn.Module):
    """GELU-gated linear unit (Shazeer 2020, eq. 5)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: Tensor) -> Tensor:
        x, gate = self.proj(x).chunk(2, dim=-1)
        return x * F.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim: int, mult: int = 4):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * mult), nn.Dropout(0.0), nn.Linear(dim * mult, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention to the text, feed-forward; each pre-normed and residual."""

    def __init__(self, dim: int, heads: int, dim_head: int, context_dim: int):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim, heads, dim_head)
        self.ff = FeedForward(dim)
        self.attn2 = CrossAttention(dim, context_dim, heads, dim_head)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        x = x + self.attn1(self.norm1(x))
        x = x + self.attn2(self.norm2(x), context)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    """Transformer over the pixels of a feature map, with 1x1 convolutions in and out (SD 1.x) or, with
    `linear`, Linear layers on the flattened pixels (SD 2.x; the same map, stored without the 1x1 axes)."""

    def __init__(
        self, channels: int, heads: int, depth: int, context_dim: int, groups: int, linear: bool = False
    ):
        super().__init__()
        dim_head = channels // heads
        inner = heads * dim_head
        self.linear = linear
        self.norm = nn.GroupNorm(groups, channels, eps=1e-6)
        self.proj_in = nn.Linear(channels, inner) if linear else nn.Conv2d(channels, inner, 1)
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, heads, dim_head, context_dim) for _ in range(depth)
        )
        self.proj_out = nn.Linear(inner, channels) if linear else nn.Conv2d(inner, channels, 1)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        height, width = x.shape[-2:]
        h = self.norm(x)
        if self.linear:
            h = self.proj_in(h.flatten(2).transpose(1, 2))
        else:
            h = self.proj_in(h).flatten(2).transpose(1, 2)
        for block in self.transformer_blocks:
            h = block(h, context)
        if self.linear:
            h = self.proj_out(h)
        h = h.transpose(1, 2).unflatten(2, (height, width))
        return x + (h if self.linear else self.proj_out(h))


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int] | torch.Size) -> Tensor:
        # Nearest to an explicit size: equals x2 when the size divides evenly, and matches the skip otherwise.
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class TimestepEmbedSequential(nn.Sequential):
    """Passes each layer the inputs it takes: the embedding, the text context, or the target size."""

    def forward(
        self, x: Tensor, emb: Tensor, context: Tensor, size: tuple[int, int] | torch.Size | None = None
    ) -> Tensor:
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, SpatialTransformer):
                x = layer(x, context)
            elif isinstance(layer, Upsample):
                x = layer(x, size)
            else:
                x = layer(x)
        return x


class UNetModel(nn.Module):
    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        mc, groups = config.model_channels, config.norm_groups
        emb_dim = mc * 4
        self.time_embed = nn.Sequential(nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        # Projects the guidance embedding onto the sinusoidal timestep embedding, before time_embed.
        self.time_embed_cond_proj = (
            nn.Linear(config.time_cond_proj_dim, mc, bias=False) if config.time_cond_proj_dim else None
        )

        def transformer(ch: int) -> SpatialTransformer:
            heads = ch // config.num_head_channels if config.num_head_channels else config.num_heads
            return SpatialTransformer(
                ch,
                heads,
                config.transformer_depth,
                config.context_dim,
                groups,
                config.use_linear_in_transformer,
            )

        self.input_blocks = nn.ModuleList(
            [TimestepEmbedSequential(nn.Conv2d(config.in_channels, mc, 3, padding=1))]
        )
        skip_channels = [mc]
        ch, ds = mc, 1
        for level, mult in enumerate(config.channel_mult):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb_dim, mult * mc, groups)]
                ch = mult * mc
                if ds in config.attention_resolutions:
                    layers.append(transformer(ch))
                self.input_blocks.append(TimestepEmbedSequential(*layers))
                skip_channels.append(ch)
            if level != len(config.channel_mult) - 1:
                self.input_blocks.append(TimestepEmbedSequential(Downsample(ch)))
                skip_channels.append(ch)
                ds *= 2

        self.middle_block = TimestepEmbedSequential(
            ResBlock(ch, emb_dim, ch, groups), transformer(ch), ResBlock(ch, emb_dim, ch, groups)
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mult))):
            for i in range(config.num_res_blocks + 1):
                layers = [ResBlock(ch + skip_channels.pop(), emb_dim, mc * mult, groups)]
                ch = mc * mult
                if ds in config.attention_resolutions:
                    layers.append(transformer(ch))
                if level and i == config.num_res_blocks:
                    layers.append(Upsample(ch))
                    ds //= 2
                self.output_blocks.append(TimestepEmbedSequential(*layers))

        self.out = nn.Sequential(
            nn.GroupNorm(groups, ch), nn.SiLU(), nn.Conv2d(mc, config.out_channels, 3, padding=1)
        )

    def forward(
        self, sample: Tensor, timestep: Tensor | float, context: Tensor, timestep_cond: Tensor | None = None
    ) -> Tensor:
        """Noise prediction eps(x_t, t, c); latents [B, C, h, w], t scalar or [B], context [B, L, D].

        `timestep_cond` [B, time_cond_proj_dim]: an LCM UNet's guidance-scale embedding (Luo et al. 2023,
        sec. 4.2: the w-conditioned model takes the guidance scale w as an input instead of being run
        twice); without it such a UNet runs with no guidance term, as diffusers' does.
        """
        timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0])
        t_emb = timestep_embedding(timesteps, self.config.model_channels).to(sample.dtype)
        if timestep_cond is not None:
            if self.time_embed_cond_proj is None:
                raise ValueError("timestep_cond given to a UNet without time_cond_proj_dim")
            t_emb = t_emb + self.time_embed_cond_proj(timestep_cond.to(sample.dtype))
        emb = self.time_embed(t_emb)

        skips = []
        h = sample
        for block in self.input_blocks:
            h = block(h, emb, context)
            skips.append(h)
        h = self.middle_block(h, emb, context)
        for block in self.output_blocks:
            h = torch.cat([h, skips.pop()], dim=1)
            # An upsampling at the end of this block must reach the size of the next skip connection.
            size = skips[-1].shape[-2:] if skips else None
            h = block(h, emb, context, size)
        return self.out(h)
