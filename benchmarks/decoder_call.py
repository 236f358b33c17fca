"""One mask-decoder call: segment_anything's decoder against the lean decoder.

A refinement call (points and a mask input, three masks) of SAM's full decoder on a
1024 px input (64 x 64 tokens), random weights, in one process: CPU time per call,
medians over interleaved repeats, and the largest difference of the logits. The
lean decoder runs on the dense embedding and on the mask input in low-rank form
(``lean-factored``, what PerSAM's cascade passes). ``--prompts`` decodes several
prompts in one call (the every-instance search's batches). Run from the repository
root::

    PYTHONPATH=src python benchmarks/decoder_call.py --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from napari_persam.core.engine.decoder import decode_masks
from napari_persam.core.engine.mask_prompts import factor_mask_prompt
from napari_persam.core.models import build_tiny_sam


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--prompts", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    sam = build_tiny_sam(seed=0, img_size=1024).eval()
    generator = torch.Generator().manual_seed(0)
    embeddings = torch.randn(1, 256, 64, 64, generator=generator)
    count = args.prompts
    coords = torch.rand(count, 2, 2, generator=generator) * 1024
    labels = torch.tensor([[1, 0]]).expand(count, -1)
    masks = torch.randn(count, 1, 256, 256, generator=generator)
    with torch.no_grad():
        sparse, dense = sam.prompt_encoder(points=(coords, labels), boxes=None, masks=masks)
        factored = factor_mask_prompt(sam.prompt_encoder, masks)  # as dense: made beforehand
        inputs = dict(
            image_embeddings=embeddings,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=True,
        )
        ways = {
            "segment_anything": lambda: sam.mask_decoder(**inputs),
            "lean": lambda: decode_masks(sam.mask_decoder, **inputs),
            "lean-factored": lambda: decode_masks(
                sam.mask_decoder,
                **{**inputs, "dense_prompt_embeddings": None},
                mask_prompt=factored,
            ),
        }
        times = {name: [] for name in ways}
        outputs = {name: way() for name, way in ways.items()}
        for _ in range(args.repeats):
            for name, way in ways.items():
                start = time.process_time()
                way()
                times[name].append(time.process_time() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    reference = outputs["segment_anything"][0]
    for name, value in medians.items():
        difference = (outputs[name][0] - reference).abs().max().item()
        print(
            f"{name}: {value * 1e3:.1f} ms CPU per call of {count} prompt(s), "
            f"{medians[name] / medians['segment_anything']:.2f}x segment_anything's, "
            f"logits within {difference:.1e}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
