"""segment_anything's ViT blocks exported with their tokens as (B, HW, C), not (B, H, W, C).

SAM's ``Block`` keeps its tokens as a (B, H, W, C) tensor and applies both
LayerNorms, the residual adds and the MLP to it. OpenVINO's CPU plugin lays 4-d
tensors out in a channel-blocked order, as for convolutions, so every LayerNorm of
the exported ViT was wrapped in layout conversions. In a ViT-B forward on an AMD EPYC,
OpenVINO's own per-node counters charged 575-629 ms to those Reorder nodes, out of
about 5 s of node time. The same arithmetic on 3-d (B, HW, C) tokens keeps the plain
layout: the conversions took 10 ms, and the forward 0.80x the CPU time, with the same
embedding to 1e-5 (BENCHMARKS.md). Only the attention sees the tokens as a grid,
because its windows and relative positions are 2-d.

The blocks are switched only while the encoder is exported (:func:`token_major_blocks`),
and switched back afterwards, so a model keeps its classes outside the export.
Only blocks of exactly segment_anything's ``Block`` class are switched.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import torch
from segment_anything.modeling.image_encoder import Block, window_partition, window_unpartition


class TokenMajorBlock(Block):
    """``Block.forward`` with the LayerNorms, adds and MLP on (B, HW, C) tokens."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C), as ``Block.forward``."""
        batch, height, width, channels = x.shape
        tokens = x.reshape(batch, height * width, channels)
        grid = self.norm1(tokens).reshape(batch, height, width, channels)
        if self.window_size > 0:
            grid, pad_hw = window_partition(grid, self.window_size)
        grid = self.attn(grid)
        if self.window_size > 0:
            grid = window_unpartition(grid, self.window_size, pad_hw, (height, width))
        tokens = tokens + grid.reshape(batch, height * width, channels)
        tokens = tokens + self.mlp(self.norm2(tokens))
        return tokens.reshape(batch, height, width, channels)


#: One export at a time switches classes: a second, overlapping export of the same encoder
#: would otherwise find no Block to switch and be traced with the classes switched back
#: half-way through.
_SWITCHING = threading.Lock()


@contextlib.contextmanager
def token_major_blocks(module: torch.nn.Module) -> Iterator[int]:
    """Inside the ``with``, each segment_anything ``Block`` in ``module`` is a TokenMajorBlock.

    Yields how many were switched; all are switched back on leaving, on error too.
    Another thread's export waits until then.
    """
    with _SWITCHING:
        blocks = [child for child in module.modules() if type(child) is Block]
        for block in blocks:
            block.__class__ = TokenMajorBlock
        try:
            yield len(blocks)
        finally:
            for block in blocks:
                block.__class__ = Block
