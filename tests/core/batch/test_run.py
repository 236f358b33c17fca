"""Batch runs without a model: planning outputs, instance and stack wiring, resuming."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from napari_persam.core.batch.plan import (
    SegmentOptions,
    output_dtype,
    plan_items,
    prepare_outputs,
)
from napari_persam.core.batch.run import iter_run_local, run_item
from napari_persam.core.engine.concepts import Concept
from napari_persam.core.engine.results import Instances, Segmentation
from napari_persam.core.engine.tiles import plan_tiles
from napari_persam.core.io.targets import resolve_targets
from napari_persam.core.progress import Progress, run

CONCEPT = Concept(target_embedding=np.ones(4, np.float32), model_fingerprint="f" * 32)


def _segmentation(mask: np.ndarray, score: float = 0.5) -> Segmentation:
    return Segmentation(
        mask=mask,
        similarity=np.zeros(mask.shape, np.float32),
        score=score,
        points=np.zeros((1, 2)),
        point_labels=np.ones(1, int),
    )


class FakeEngine:
    """Thresholds the image: enough to check what is read and written where."""

    def plan_tiles(self, shape, concept):
        return [plan_tiles(shape, pixels_per_cell=None)]  # the whole image, one encoding

    def segment(self, image, concept):
        return _segmentation(np.asarray(image) > 100)

    def segment_instances(self, image, concept):
        labels = np.zeros(np.shape(image), np.int32)
        labels[np.asarray(image) > 100] = 300  # more than uint8 holds
        return Instances(
            labels=labels,
            scores=np.array([0.7], np.float32),
            similarity=np.zeros(np.shape(image), np.float32),
            classes=np.ones(1, np.int32),
            points=np.zeros((1, 2)),
            ids=np.array([300], np.int32),
        )

    def segment_stack(self, stack, concept, *, reference_index, instances, mode, keep_results):
        assert mode == "propagate" and not instances
        assert not keep_results  # a batch run writes each slice as it comes
        self.reference_index = reference_index
        depth = stack.shape[0]  # zarr arrays have no len()
        order = [reference_index, *range(reference_index + 1, depth),
                 *range(reference_index - 1, -1, -1)]  # fmt: skip
        results = {}
        for done, index in enumerate(order, start=1):
            results[index] = _segmentation(np.asarray(stack[index]) > 100, 0.25)
            yield Progress(done, depth, index=index, result=results[index])
        return results


def test_instances_are_written_as_int32_tiff(tmp_path):
    image = np.zeros((8, 9), np.uint16)
    image[2:5, 3:6] = 1000
    tifffile.imwrite(tmp_path / "a.tif", image)
    options = SegmentOptions(instances=True)
    dtype = output_dtype([1], options)
    assert dtype == np.int32
    (item,), _ = plan_items(
        resolve_targets([str(tmp_path / "a.tif")]), tmp_path / "out", options=options
    )
    record = run_item(FakeEngine(), {1: CONCEPT}, item, options=options, dtype=dtype)
    labels = tifffile.imread(tmp_path / "out" / "a.tif")
    assert labels.dtype == np.int32 and labels.max() == 300
    assert record["instances"] == 300 and record["area"] == 9
    assert record["tiles"] == 1 and record["pixels_per_cell"] is None
    assert record["score"] == pytest.approx(0.7)


def test_propagation_is_one_task_writing_every_slice(tmp_path):
    stack = np.zeros((3, 8, 9), np.uint8)
    stack[:, 2:4, 2:4] = 200
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    options = SegmentOptions(propagate=True)
    dtype = output_dtype([5], options)
    items, failures = plan_items(
        resolve_targets([str(tmp_path / "s.tif")]), tmp_path / "out", options=options
    )
    assert failures == [] and len(items) == 1 and items[0].index is None
    items, failures = prepare_outputs(items, tmp_path / "out", dtype=dtype)
    assert failures == [] and len(items) == 1
    engine = FakeEngine()
    (record,) = run(iter_run_local(engine, {5: CONCEPT}, items, options=options, dtype=dtype))
    assert record.get("error") is None, record
    assert engine.reference_index == 1  # the middle slice by default
    labels = zarr.open_array(str(tmp_path / "out" / "s.zarr"), mode="r")[...]
    np.testing.assert_array_equal(labels, np.where(stack > 100, 5, 0))
    assert record["status"] == "ok" and record["area"] == 12 and record["score"] == 0.25
    assert items[0].is_finished()


def test_foreign_zarr_at_the_output_is_left_alone(tmp_path):
    tifffile.imwrite(tmp_path / "s.tif", np.zeros((2, 8, 9), np.uint8), photometric="minisblack")
    foreign = zarr.create_array(store=str(tmp_path / "out" / "s.zarr"), data=np.ones((2, 8, 9)))
    options = SegmentOptions()
    planned, failures = plan_items(
        resolve_targets([str(tmp_path / "s.tif")]), tmp_path / "out", options=options
    )
    assert len(planned) == 2 and failures == []
    items, failures = prepare_outputs(planned, tmp_path / "out", dtype=np.dtype(np.uint8))
    assert items == []
    (failure,) = failures
    assert failure["status"] == "failed" and "already exists" in failure["error"]
    np.testing.assert_array_equal(foreign[...], 1)


def test_a_file_without_a_record_is_neither_skipped_nor_overwritten(tmp_path):
    image = np.zeros((8, 9), np.uint8)
    image[2:5, 3:6] = 200
    Image.fromarray(image).save(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    mine = np.full((8, 9), 7, np.uint8)
    Image.fromarray(mine).save(out / "a.png")  # the user's own file, same name
    options = SegmentOptions()
    items, _ = plan_items(resolve_targets([str(tmp_path / "a.png")]), out, options=options)
    assert not items[0].is_finished()
    (record,) = run(iter_run_local(FakeEngine(), {1: CONCEPT}, items, options=options,
                                   dtype=np.dtype(np.uint8)))  # fmt: skip
    assert record["status"] == "failed" and "not overwritten" in record["error"]
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a.png")), mine)


def test_a_deleted_stack_output_is_segmented_again(tmp_path):
    import shutil

    stack = np.zeros((2, 8, 9), np.uint8)
    stack[:, 2:4, 2:4] = 200
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    out = tmp_path / "out"
    options = SegmentOptions()
    dtype = output_dtype([3], options)

    def segment_all():
        items, _ = plan_items(resolve_targets([str(tmp_path / "s.tif")]), out, options=options)
        items, _ = prepare_outputs(items, out, dtype=dtype)
        return run(iter_run_local(FakeEngine(), {3: CONCEPT}, items, options=options,
                                  dtype=dtype))  # fmt: skip

    assert [r["status"] for r in segment_all()] == ["ok", "ok"]
    assert [r["status"] for r in segment_all()] == ["skipped", "skipped"]
    shutil.rmtree(out / "s.zarr")  # the user wants it done again
    assert [r["status"] for r in segment_all()] == ["ok", "ok"]
    labels = zarr.open_array(str(out / "s.zarr"), mode="r")[...]
    np.testing.assert_array_equal(labels, np.where(stack > 100, 3, 0))
