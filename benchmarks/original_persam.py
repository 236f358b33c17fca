"""The official PerSAM / PerSAM-F procedures, re-implemented step by step for timing.

Written from the published algorithm and the structure of the authors' scripts
(``persam.py`` and ``persam_f.py`` of ZrrSkywalker/Personalize-SAM), on an
unmodified ``segment_anything.SamPredictor``:

* no embedding cache: every image, the reference included, goes through
  ``predictor.set_image`` (the image encoder) each time the script meets it;
* the reference mask goes through SAM's pixel preprocessing and is interpolated to
  the feature grid, then thresholded at 0 (as the official ``set_image`` does);
* similarity maps are upsampled to the full image with ``postprocess_masks``;
* every prediction is ``predictor.predict`` at full image resolution (the first
  PerSAM step with target-guided attention and semantic prompt goes through
  :func:`napari_persam.core.engine.decoder.decode_masks`, the same decoder compute as the
  authors' modified decoder);
* PerSAM-F runs SAM's decoder on every one of its 1000 training steps and computes
  the loss on full-resolution logits of the three masks.

Only the cost matters here, not the masks: the official code's bugs that change
results but not cost are kept where they are cheaper to keep.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor
from timing import StageClock, lap_now, lap_since, synchronize

from napari_persam.core.engine.decoder import decode_masks
from napari_persam.core.engine.finetune import dice_loss, sigmoid_focal_loss


@dataclass
class OfficialReference:
    """What the official scripts keep from the reference."""

    target_feat: torch.Tensor  # (1, C) normalised
    target_embedding: torch.Tensor  # (1, 1, C)
    ref_feat: torch.Tensor  # (h, w, C)
    mask: np.ndarray  # (H, W) bool, full resolution
    original_size: tuple[int, int] = (0, 0)
    input_size: tuple[int, int] = (0, 0)


@dataclass
class FitResult:
    """Steps run, their total :data:`timing.Lap` and the loss per step."""

    steps_run: int
    lap: dict[str, float]
    losses: list[float] = field(default_factory=list)

    def per_step(self) -> dict[str, float]:
        return {key: value / max(self.steps_run, 1) for key, value in self.lap.items()}


def _mask_rgb(mask: np.ndarray) -> np.ndarray:
    return np.repeat((mask.astype(np.uint8) * 255)[..., None], 3, axis=-1)


def learn_reference(
    predictor: SamPredictor, image: np.ndarray, mask: np.ndarray, clock: StageClock
) -> OfficialReference:
    """Encode the reference and take the mean foreground feature (official step 1-2)."""
    clock.wrap("image encoding", predictor.set_image)(image)
    with torch.no_grad(), clock.stage("learning"):
        sam = predictor.model
        resized = predictor.transform.apply_image(_mask_rgb(mask))
        mask_torch = torch.as_tensor(resized, device=predictor.device).permute(2, 0, 1)[None]
        processed = sam.preprocess(mask_torch.float())  # normalised and padded, as upstream
        ref_feat = predictor.features.squeeze().permute(1, 2, 0)
        grid_mask = F.interpolate(processed, size=ref_feat.shape[0:2], mode="bilinear")
        grid_mask = grid_mask.squeeze()[0]
        target_feat = ref_feat[grid_mask > 0]
        target_embedding = target_feat.mean(0).unsqueeze(0)
        target_feat = target_embedding / target_embedding.norm(dim=-1, keepdim=True)
    return OfficialReference(
        target_feat=target_feat,
        target_embedding=target_embedding.unsqueeze(0),
        ref_feat=ref_feat,
        mask=mask,
        original_size=predictor.original_size,
        input_size=predictor.input_size,
    )


def _similarity(predictor: SamPredictor, target_feat: torch.Tensor) -> torch.Tensor:
    """(H, W) cosine similarity at full resolution of the image set in ``predictor``."""
    feat = predictor.features.squeeze()
    channels, height, width = feat.shape
    feat = feat / feat.norm(dim=0, keepdim=True)
    sim = (target_feat @ feat.reshape(channels, height * width)).reshape(1, 1, height, width)
    sim = F.interpolate(sim, scale_factor=4, mode="bilinear")
    return predictor.model.postprocess_masks(
        sim, input_size=predictor.input_size, original_size=predictor.original_size
    ).squeeze()


def _point_selection(sim: torch.Tensor, *, negative: bool) -> tuple[np.ndarray, np.ndarray]:
    """Top-1 positive (and bottom-1 negative) location, (x, y) as SAM takes points."""
    width = sim.shape[1]
    best = int(sim.flatten().argmax())
    points = [[best % width, best // width]]
    labels = [1]
    if negative:
        worst = int(sim.flatten().argmin())
        points.append([worst % width, worst // width])
        labels.append(0)
    return np.array(points), np.array(labels)


def segment_target(
    predictor: SamPredictor, image: np.ndarray, reference: OfficialReference, clock: StageClock
) -> np.ndarray:
    """Official PerSAM on one target: encode, prior, guided decode, two refinements."""
    clock.wrap("image encoding", predictor.set_image)(image)
    sam = predictor.model
    with torch.no_grad(), clock.stage("location prior"):
        sim = _similarity(predictor, reference.target_feat)
        points, labels = _point_selection(sim, negative=True)
        sim = (sim - sim.mean()) / torch.std(sim)
        grid = sam.prompt_encoder.image_embedding_size
        sim = F.interpolate(sim[None, None], size=grid, mode="bilinear")
        attn_sim = sim.sigmoid_().unsqueeze(0).flatten(3)

    with torch.no_grad(), clock.stage("first decoding"):
        coords = predictor.transform.apply_coords(points, predictor.original_size)
        coords_t = torch.as_tensor(coords, dtype=torch.float, device=predictor.device)[None]
        labels_t = torch.as_tensor(labels, dtype=torch.int, device=predictor.device)[None]
        sparse, dense = sam.prompt_encoder(points=(coords_t, labels_t), boxes=None, masks=None)
        low_res, _ = decode_masks(
            sam.mask_decoder,
            image_embeddings=predictor.features,
            image_pe=sam.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
            attn_bias=attn_sim,
            target_embedding=reference.target_embedding.reshape(-1),
        )
        high = sam.postprocess_masks(low_res, predictor.input_size, predictor.original_size)
        masks = (high > sam.mask_threshold)[0].cpu().numpy()
        logits = low_res[0].cpu().numpy()

    with clock.stage("refinement"):
        masks, scores, logits = predictor.predict(
            point_coords=points,
            point_labels=labels,
            mask_input=logits[0:1],
            multimask_output=True,
        )
        best = int(np.argmax(scores))
        ys, xs = np.nonzero(masks[best])
        if ys.size:
            box = np.array([xs.min(), ys.min(), xs.max(), ys.max()])
            masks, scores, logits = predictor.predict(
                point_coords=points,
                point_labels=labels,
                box=box[None, :],
                mask_input=logits[best : best + 1],
                multimask_output=True,
            )
            best = int(np.argmax(scores))
    return masks[best]


def fit_persam_f(
    predictor: SamPredictor,
    reference: OfficialReference,
    *,
    steps: int = 1000,
    max_seconds: float | None = None,
    lr: float = 1e-3,
) -> FitResult:
    """The official PerSAM-F training loop: SAM's decoder is called on every step.

    ``predictor`` must hold the reference image (``set_image`` was its last call).
    Stops early after ``max_seconds`` so a slow machine can extrapolate the cost of
    all ``steps`` from the steps it ran (every step does identical work).
    """
    device = predictor.device
    with torch.no_grad():
        sim = _similarity(predictor, reference.target_feat)
        points, labels = _point_selection(sim, negative=False)
    gt_mask = torch.as_tensor(reference.mask, dtype=torch.float32, device=device).flatten()
    free = torch.nn.Parameter(torch.ones(2, 1, device=device) / 3)
    optimizer = torch.optim.AdamW([free], lr=lr, eps=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    coords = predictor.transform.apply_coords(points, predictor.original_size)
    coords_t = torch.as_tensor(coords, dtype=torch.float, device=device)[None]
    labels_t = torch.as_tensor(labels, dtype=torch.int, device=device)[None]
    losses = []
    start = lap_now()
    steps_run = 0
    for _ in range(steps):
        # The decoder runs every step although its inputs never change (as upstream).
        logits_high, _, _ = predictor.predict_torch(
            point_coords=coords_t, point_labels=labels_t, multimask_output=True, return_logits=True
        )
        logits_high = logits_high[0].flatten(1)
        weights = torch.cat((1 - free.sum(0, keepdim=True), free), dim=0)
        mixed = (logits_high * weights).sum(0)
        loss = dice_loss(mixed, gt_mask) + sigmoid_focal_loss(mixed, gt_mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        steps_run += 1
        if max_seconds is not None and time.perf_counter() - start["wall"] > max_seconds:
            break
    synchronize(device)
    return FitResult(steps_run=steps_run, lap=lap_since(start), losses=losses)
