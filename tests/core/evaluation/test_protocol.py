"""Dataset loading, mask decoding and the one-shot evaluation protocol."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from PIL import Image

from napari_persam.core.engine.results import Segmentation
from napari_persam.core.evaluation import protocol as evaluation
from napari_persam.core.evaluation.dataset import load_dataset
from napari_persam.core.evaluation.protocol import EvaluationOptions, evaluate_dataset
from napari_persam.core.io.images import read_image, read_mask
from napari_persam.core.progress import run


# ---------------------------------------------------------------------- datasets
def _write_dataset(root, masks, *, image_shape=(32, 40)):
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    for name, mask in masks.items():
        image = rng.integers(0, 255, (*image_shape, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    return root


def test_load_dataset_pairs_by_stem_and_reports_unpaired(tmp_path):
    root = _write_dataset(tmp_path / "d", {"b": _mask(), "a": _mask()})
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(root / "images" / "lonely.png")
    (root / "images" / "notes.txt").write_text("ignored")
    dataset = load_dataset(root)
    assert [sample.name for sample in dataset.samples] == ["a", "b"]
    assert dataset.unpaired == ("lonely.png",)
    assert dataset.find("b.png").name == "b"
    with pytest.raises(ValueError, match="No image named 'zz'"):
        dataset.find("zz")


def test_load_dataset_explains_missing_folders(tmp_path):
    with pytest.raises(ValueError, match="images/ and masks/"):
        load_dataset(tmp_path)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    with pytest.raises(ValueError, match="No image"):
        load_dataset(tmp_path)


def _mask(y0=8, x0=10, y1=20, x1=30, shape=(32, 40), value=255):
    mask = np.zeros(shape, dtype=np.uint8)
    mask[y0:y1, x0:x1] = value
    return mask


# ---------------------------------------------------------------------- protocol
class OracleEngine:
    """Returns fixed masks per image, so the protocol's arithmetic can be checked."""

    model_name = "oracle"

    def __init__(self, predictions):
        self.predictions = predictions  # image fingerprint -> (H, W) bool
        self.learned = None
        self.finetuned = False

    def learn(self, pairs):
        self.learned = list(pairs)
        return "concept"

    def finetune(self, concept):
        self.finetuned = True
        return concept

    def segment(self, image, concept):
        mask = self.predictions[int(image[0, 0, 0])]
        return Segmentation(
            mask=mask,
            similarity=mask.astype(np.float32),
            score=0.5,
            points=np.zeros((1, 2)),
            point_labels=np.ones(1, dtype=np.int64),
        )


def _oracle_dataset(tmp_path, truths):
    """Images whose first pixel is their index, so the oracle knows which it sees."""
    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for index, (name, truth) in enumerate(truths.items()):
        image = np.zeros((*truth.shape, 3), dtype=np.uint8)
        image[0, 0, 0] = index
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(truth).save(root / "masks" / f"{name}.png")
    return load_dataset(root)


def test_one_shot_protocol_by_hand(tmp_path):
    shape = (10, 10)
    truths = {
        "a_ref": _mask(0, 0, 4, 4, shape),  # reference
        "b": _mask(0, 0, 4, 4, shape),  # 16 px
        "c": _mask(0, 0, 2, 2, shape),  # 4 px
    }
    dataset = _oracle_dataset(tmp_path, truths)
    b_pred = np.zeros(shape, bool)
    b_pred[0:4, 0:2] = True  # 8 of 16: IoU 0.5
    c_pred = np.zeros(shape, bool)
    c_pred[0:2, 0:4] = True  # 4 in 8: IoU 0.5
    engine = OracleEngine({1: b_pred, 2: c_pred})
    steps = []
    report = run(evaluate_dataset(engine, dataset), on_progress=steps.append)
    assert steps[0].message.startswith("learning")
    assert [step.result.name for step in steps[1:]] == ["b", "c"]
    assert len(engine.learned) == 1 and engine.learned[0][1].sum() == 16
    summary = report.summary()
    assert summary["mean_iou"] == pytest.approx(0.5)
    # Summed: intersections 8 + 4, unions 16 + 8.
    assert summary["dataset_iou"] == pytest.approx(12 / 24)
    assert summary["targets"] == 2 and summary["failed"] == 0
    assert not report.instance_metrics  # binary masks
    assert not engine.finetuned


def test_dataset_iou_differs_from_mean_iou(tmp_path):
    shape = (10, 10)
    truths = {
        "a": _mask(0, 0, 1, 1, shape),
        "b": _mask(0, 0, 10, 10, shape),
        "c": _mask(0, 0, 1, 2, shape),
    }
    dataset = _oracle_dataset(tmp_path, truths)
    big = np.zeros(shape, bool)
    big[:, :5] = True  # 50 of 100
    engine = OracleEngine({1: big, 2: np.zeros(shape, bool)})
    summary = run(evaluate_dataset(engine, dataset)).summary()
    assert summary["mean_iou"] == pytest.approx((0.5 + 0.0) / 2)
    assert summary["dataset_iou"] == pytest.approx(50 / 102)


def test_k_shot_learns_from_every_named_reference_and_finetunes(tmp_path):
    shape = (10, 10)
    truths = {name: _mask(0, 0, 4, 4, shape) for name in "abcd"}
    dataset = _oracle_dataset(tmp_path, truths)
    predictions = dict.fromkeys(range(4), truths["a"] > 0)
    engine = OracleEngine(predictions)
    options = EvaluationOptions(references=("c", "a", "c"), finetune=True)
    report = run(evaluate_dataset(engine, dataset, options=options))
    assert report.references == ["c", "a"]
    assert len(engine.learned) == 2
    assert [image.name for image in report.images] == ["b", "d"]
    assert engine.finetuned and report.finetuned
    assert report.summary()["mean_iou"] == 1.0


def test_bad_reference_choices_are_explained(tmp_path):
    shape = (10, 10)
    dataset = _oracle_dataset(
        tmp_path, {"a": np.zeros(shape, np.uint8), "b": _mask(0, 0, 2, 2, shape)}
    )
    engine = OracleEngine({})
    with pytest.raises(ValueError, match="reference a is empty"):
        run(evaluate_dataset(engine, dataset))
    with pytest.raises(ValueError, match="at least one more image"):
        run(evaluate_dataset(engine, dataset, options=EvaluationOptions(references=("a", "b"))))
    with pytest.raises(ValueError, match="instances must be"):
        EvaluationOptions(instances="maybe")


def test_a_failing_target_is_recorded_and_the_rest_go_on(tmp_path):
    shape = (10, 10)
    truths = {
        "a": _mask(0, 0, 4, 4, shape),
        "b": _mask(0, 0, 4, 4, shape),
        "c": _mask(0, 0, 4, 4, shape),
    }
    dataset = _oracle_dataset(tmp_path, truths)
    # b's mask does not fit its image.
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(dataset.root / "masks" / "b.png")
    engine = OracleEngine({2: truths["c"] > 0})
    report = run(evaluate_dataset(engine, dataset))
    failed = report.failed
    assert [image.name for image in failed] == ["b"]
    assert "(5, 5)" in failed[0].error
    assert report.summary()["mean_iou"] == 1.0
    assert "failed" in report.to_markdown()


def test_instance_ap_with_connected_components(tmp_path):
    shape = (12, 12)
    two = np.zeros(shape, np.uint8)
    two[0:4, 0:4] = 1
    two[6:10, 6:10] = 2
    truths = {"a": two, "b": two}
    dataset = _oracle_dataset(tmp_path, truths)
    # Prediction: one object exactly, the other missed.
    pred = np.zeros(shape, bool)
    pred[0:4, 0:4] = True
    report = run(evaluate_dataset(OracleEngine({1: pred}), dataset))
    assert report.instance_metrics
    image = report.images[0]
    assert (image.true_instances, image.predicted_instances) == (2, 1)
    assert image.instance_f1 == pytest.approx(2 / 3)
    # Recall reaches 0.5 at precision 1: 51 of 101 recall points.
    assert report.ap50 == pytest.approx(51 / 101)
    assert report.ap50_95 == pytest.approx(51 / 101)


def test_the_instance_predictor_is_swappable(tmp_path):
    shape = (12, 12)
    two = np.zeros(shape, np.uint8)
    two[0:4, 0:4] = 1
    two[6:10, 6:10] = 2
    dataset = _oracle_dataset(tmp_path, {"a": two, "b": two})

    def perfect(engine, image, concept, segmentation):
        return evaluation.PredictedInstances(labels=two.astype(np.int32), scores=np.ones(2))

    engine = OracleEngine({1: two > 0})
    report = run(evaluate_dataset(engine, dataset, instance_predictor=perfect))
    assert report.ap50_95 == pytest.approx(1.0)


def test_engine_segment_instances_is_used_when_present():
    labels = np.zeros((6, 6), np.int32)
    labels[0:2, 0:2] = 4
    labels[3:6, 3:6] = 9

    class Found:
        pass

    class Engine:
        def segment_instances(self, image, concept):
            found = Found()
            found.labels = labels
            return found

    predicted = evaluation.predict_instances(Engine(), np.zeros((6, 6)), None, None)
    np.testing.assert_array_equal(predicted.labels, labels)
    np.testing.assert_allclose(predicted.scores, [4, 9])  # areas when no scores are given


def test_report_json_and_markdown(tmp_path):
    shape = (10, 10)
    truths = {"a": _mask(0, 0, 4, 4, shape), "b": _mask(0, 0, 4, 4, shape)}
    dataset = _oracle_dataset(tmp_path, truths)
    report = run(evaluate_dataset(OracleEngine({1: np.zeros(shape, bool)}), dataset))
    data = json.loads(json.dumps(report.to_dict()))
    assert data["summary"]["dataset_iou"] == 0.0
    assert data["images"][0]["name"] == "b"
    assert data["model"] == "oracle"
    markdown = report.to_markdown()
    assert "| dataset_iou | 0.0000 |" in markdown
    assert "| b |" in markdown
    assert math.isnan(report.ap50)


def test_real_engine_end_to_end(tmp_path, tiny_sam):
    from napari_persam.core import PerSAM, PerSAMConfig

    masks = {name: _mask(6, 8, 22, 30, shape=(48, 64)) for name in ("x", "y")}
    root = _write_dataset(tmp_path / "d", masks, image_shape=(48, 64))
    config = PerSAMConfig(finetune_steps=3, refinement_steps=0)
    engine = PerSAM(tiny_sam, config=config, device="cpu", model_name="tiny")
    options = EvaluationOptions(finetune=True)
    report = run(evaluate_dataset(engine, load_dataset(root), options=options))
    assert [image.name for image in report.images] == ["y"]
    assert report.failed == []
    assert report.model_name == "tiny"
    assert 0.0 <= report.summary()["dataset_iou"] <= 1.0


@pytest.mark.parametrize(
    "name",
    ["perseg_examples", "kvasir_seg", "tgs_salt", "dsb2018_stage1_test", "isbi2012_em_membranes"],
)
def test_shared_datasets_decode(shared_data, name):
    dataset = load_dataset(shared_data / name)
    instances = []
    for sample in dataset.samples[:12]:
        image = read_image(sample.image_path)
        mask = read_mask(sample.mask_path)
        assert mask.labels.shape == image.shape[:2]
        instances.append(mask.is_instances)
    # Only the DSB masks are instance labels; the others are binary in some encoding.
    assert any(instances) == (name == "dsb2018_stage1_test")
