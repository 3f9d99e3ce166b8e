"""Scaled dot-product attention shared by the three networks (Vaswani et al. 2017, eq. 1).

Written as plain matmul + softmax rather than F.scaled_dot_product_attention: the ONNX exporter turns
this into MatMul/Softmax nodes that every onnxruntime build and opset runs, with no dependence on how a
given torch version decomposes the fused kernel or on an opset-23 Attention op.
"""

import torch
from torch import Tensor


def split_heads(x: Tensor, heads: int) -> Tensor:
    """[B, L, H*D] -> [B, H, L, D]."""
    batch, length, _ = x.shape
    return x.reshape(batch, length, heads, -1).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B, H, L, D] -> [B, L, H*D]."""
    batch, heads, length, dim = x.shape
    return x.transpose(1, 2).reshape(batch, length, heads * dim)


def causal_mask(length: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Additive [L, L] mask: position i attends to positions <= i (CLIP's text transformer)."""
    return torch.full((length, length), float("-inf"), dtype=dtype, device=device).triu(1)


def attention(q: Tensor, k: Tensor, v: Tensor, heads: int, mask: Tensor | None = None) -> Tensor:
    """softmax(Q K^T / sqrt(d) + mask) V: q [B, Lq, C], k and v [B, Lk, C] -> [B, Lq, C]."""
    q, k, v = split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)
    # Scaling q before the product keeps the logits' intermediate magnitude down for float16.
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    if mask is not None:
        scores = scores + mask
    return merge_heads(scores.softmax(dim=-1) @ v)
