"""The key names and shapes of an official MobileSAM image encoder, written out independently.

Derived by hand from the module tree of MobileSAM's ``tiny_vit_sam.py``
(ChaoningZhang/MobileSAM), not from our encoder, so tests can write checkpoints in
the official layout and check that our key mapping and shapes agree with it:

- ``patch_embed.seq.0`` and ``seq.2``: conv(3x3, stride 2) + batchnorm pairs, the
  convolution named ``c``;
- ``layers.0``: MBConv blocks (``conv1`` 1x1 to 4x width, ``conv2`` depthwise 3x3,
  ``conv3`` 1x1 back);
- ``layers.1..``: attention blocks (``attn.norm/qkv/proj/attention_biases``,
  ``mlp.norm/fc1/fc2``, ``local_conv`` depthwise 3x3 + batchnorm);
- ``layers.i.downsample`` at the END of every stage but the last (``conv1`` 1x1,
  ``conv2`` depthwise 3x3, ``conv3`` 1x1);
- the unused ImageNet classifier ``norm_head`` and ``head`` (1000 classes);
- SAM's ``neck`` (``0`` conv 1x1, ``1`` LayerNorm2d, ``2`` conv 3x3, ``3`` LayerNorm2d).
"""

from __future__ import annotations

import torch


def official_encoder_shapes(
    *,
    embed_dims: tuple[int, ...] = (64, 128, 160, 320),
    depths: tuple[int, ...] = (2, 2, 6, 2),
    num_heads: tuple[int, ...] = (2, 4, 5, 10),
    window_sizes: tuple[int, ...] = (7, 7, 14, 7),
    mlp_ratio: int = 4,
    mbconv_expand_ratio: int = 4,
    num_classes: int = 1000,
    out_chans: int = 256,
) -> dict[str, tuple[int, ...]]:
    """Official key -> shape for the encoder (no ``image_encoder.`` prefix)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def conv_bn(prefix: str, cin: int, cout: int, kernel: int, *, depthwise: bool = False):
        shapes[f"{prefix}.c.weight"] = (cout, 1 if depthwise else cin, kernel, kernel)
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.bn.{name}"] = (cout,)
        shapes[f"{prefix}.bn.num_batches_tracked"] = ()

    first = embed_dims[0]
    conv_bn("patch_embed.seq.0", 3, first // 2, 3)
    conv_bn("patch_embed.seq.2", first // 2, first, 3)
    for i, (dim, depth) in enumerate(zip(embed_dims, depths)):
        for j in range(depth):
            block = f"layers.{i}.blocks.{j}"
            if i == 0:
                hidden = dim * mbconv_expand_ratio
                conv_bn(f"{block}.conv1", dim, hidden, 1)
                conv_bn(f"{block}.conv2", hidden, hidden, 3, depthwise=True)
                conv_bn(f"{block}.conv3", hidden, dim, 1)
                continue
            heads, window = num_heads[i], window_sizes[i]
            head_dim = dim // heads
            # attn_ratio 1: queries, keys and values all have head_dim per head.
            shapes[f"{block}.attn.attention_biases"] = (heads, window * window)
            shapes[f"{block}.attn.norm.weight"] = (dim,)
            shapes[f"{block}.attn.norm.bias"] = (dim,)
            shapes[f"{block}.attn.qkv.weight"] = (3 * heads * head_dim, dim)
            shapes[f"{block}.attn.qkv.bias"] = (3 * heads * head_dim,)
            shapes[f"{block}.attn.proj.weight"] = (dim, heads * head_dim)
            shapes[f"{block}.attn.proj.bias"] = (dim,)
            shapes[f"{block}.mlp.norm.weight"] = (dim,)
            shapes[f"{block}.mlp.norm.bias"] = (dim,)
            shapes[f"{block}.mlp.fc1.weight"] = (dim * mlp_ratio, dim)
            shapes[f"{block}.mlp.fc1.bias"] = (dim * mlp_ratio,)
            shapes[f"{block}.mlp.fc2.weight"] = (dim, dim * mlp_ratio)
            shapes[f"{block}.mlp.fc2.bias"] = (dim,)
            conv_bn(f"{block}.local_conv", dim, dim, 3, depthwise=True)
        if i < len(depths) - 1:
            out = embed_dims[i + 1]
            down = f"layers.{i}.downsample"
            conv_bn(f"{down}.conv1", dim, out, 1)
            conv_bn(f"{down}.conv2", out, out, 3, depthwise=True)
            conv_bn(f"{down}.conv3", out, out, 1)
    last = embed_dims[-1]
    shapes["norm_head.weight"] = (last,)
    shapes["norm_head.bias"] = (last,)
    shapes["head.weight"] = (num_classes, last)
    shapes["head.bias"] = (num_classes,)
    shapes["neck.0.weight"] = (out_chans, last, 1, 1)
    shapes["neck.1.weight"] = (out_chans,)
    shapes["neck.1.bias"] = (out_chans,)
    shapes["neck.2.weight"] = (out_chans, out_chans, 3, 3)
    shapes["neck.3.weight"] = (out_chans,)
    shapes["neck.3.bias"] = (out_chans,)
    return shapes


def official_encoder_state(*, seed: int = 0, **dims) -> dict[str, torch.Tensor]:
    """Random tensors in the official layout (:func:`official_encoder_shapes`), seeded."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in official_encoder_shapes(**dims).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0, dtype=torch.long)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[key] = torch.randn(shape, generator=generator) * 0.02
    return state
