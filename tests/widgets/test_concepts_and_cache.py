"""Concept files in the widget (export, load, wrong model) and the shared disk cache."""

from __future__ import annotations

import numpy as np

from napari_persam.core.io.concept_file import read_concept_file
from tests.widgets._helpers import run_and_wait, squares


def _painted(shape: tuple[int, int], *values: int) -> np.ndarray:
    labels = np.zeros(shape, dtype=np.uint8)
    for index, value in enumerate(values):
        labels[4:12, 4 + 16 * index : 12 + 16 * index] = value
    return labels


def _tiny_factory(*, seed: int = 0, encodes: list | None = None):
    """A model_factory building the tiny SAM of ``seed``; counts encoder calls in ``encodes``."""

    def factory(name, *, checkpoint, device):
        from napari_persam.core.models import build_tiny_sam

        sam = build_tiny_sam(seed=seed).to(device or "cpu").eval()
        if encodes is not None:
            encode = sam.image_encoder.forward

            def counted(*args, **kwargs):
                encodes.append(1)
                return encode(*args, **kwargs)

            sam.image_encoder.forward = counted
        return sam
        yield  # a generator, as the hook requires

    return factory


def test_export_writes_the_learned_label_values(viewer, open_widget, qtbot, tmp_path):
    viewer.add_image(squares((48, 64)), name="img")
    viewer.add_labels(_painted((48, 64), 2, 5), name="ref")
    widget = open_widget()
    assert not widget.export_button.enabled  # nothing learned yet
    widget.learn_all_values.value = True
    run_and_wait(qtbot, widget)

    assert widget.last_concept is not None and widget.last_concept.label_values == [2, 5]
    assert widget.export_button.enabled
    widget.export_path.value = tmp_path / "classes"  # the suffix is added
    widget.export_button.native.click()

    content = read_concept_file(tmp_path / "classes.npz")
    assert content.label_values == [2, 5]
    assert content.model_name == "tiny"
    assert content.config is not None and content.config.min_area_fraction == 0.0
    assert "Exported" in widget.status.value


def test_export_keeps_a_file_that_is_not_a_concept(viewer, open_widget, qtbot, tmp_path):
    viewer.add_image(squares((32, 32)), name="img")
    viewer.add_labels(_painted((32, 32), 1), name="ref")
    widget = open_widget()
    assert widget.export_concept(tmp_path / "c.npz") is None  # no Run yet: refused
    run_and_wait(qtbot, widget)
    precious = tmp_path / "image.npz"
    precious.write_bytes(b"not a concept")
    assert widget.export_concept(precious) is None
    assert precious.read_bytes() == b"not a concept"
    assert "is not a concept file" in widget.status.value


def test_a_loaded_concept_segments_another_image_without_the_reference(
    viewer, open_widget, qtbot, tmp_path
):
    viewer.add_image(squares((48, 64)), name="img")
    painted = _painted((48, 64), 3)
    reference = viewer.add_labels(painted.copy(), name="ref")
    widget = open_widget()
    run_and_wait(qtbot, widget)
    path = widget.export_concept(tmp_path / "learned.npz")
    assert path is not None and read_concept_file(path).label_values == [3]

    other = viewer.add_image(squares((40, 40), seed=3), name="other")  # not the reference's shape
    widget.image.value = other
    widget.load_concept(path)
    assert not widget.finetune.enabled  # PerSAM-F has no references to train on
    assert not widget.reference.enabled
    run_and_wait(qtbot, widget)

    assert widget.status.value.startswith("Done: segmented 1 of 1"), widget.status.value
    result = viewer.layers["other PerSAM"]
    assert result.data.shape == (40, 40)
    assert set(np.unique(result.data)) <= {0, 3}
    assert np.any(viewer.layers["other similarity"].data != 0)
    assert widget.job.shots == () and widget.job.values == (3,)
    np.testing.assert_array_equal(reference.data, painted)  # never read, never changed

    widget.load_concept(None)  # back to learning from the reference
    assert widget.finetune.enabled and widget.reference.enabled


def test_a_concept_of_another_model_is_refused_with_both_named(
    viewer, open_widget, qtbot, tmp_path, notifications
):
    from napari_persam.core.engine.embeddings import model_fingerprint
    from napari_persam.core.models import build_tiny_sam

    viewer.add_image(squares((32, 32)), name="img")
    viewer.add_labels(_painted((32, 32), 1), name="ref")
    widget = open_widget()
    widget.model_factory = _tiny_factory(seed=0)
    run_and_wait(qtbot, widget)
    path = widget.export_concept(tmp_path / "seed0.npz")
    learned_with = read_concept_file(path).model_fingerprint

    widget.model_factory = _tiny_factory(seed=1)  # other weights, same name
    widget.load_concept(path)
    run_and_wait(qtbot, widget)

    message = next((m for m in notifications if "was learned with model" in m), "")
    assert learned_with[:12] in message
    assert model_fingerprint(build_tiny_sam(seed=1))[:12] in message
    assert "choose that model" in message
    assert widget.status.value.startswith("Failed")
    assert widget.worker is None and widget.run_button.enabled  # still usable


def test_the_disk_cache_serves_a_fresh_model_without_encoding(
    viewer, open_widget, qtbot, tmp_path, monkeypatch
):
    from napari_persam.core.models.checkpoints import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))  # an empty cache for this test
    viewer.add_image(squares((32, 48), seed=7), name="img")
    viewer.add_labels(_painted((32, 48), 1), name="ref")
    widget = open_widget()
    assert widget.cache_on_disk.value  # on by default
    first: list = []
    widget.model_factory = _tiny_factory(encodes=first)
    run_and_wait(qtbot, widget)
    assert first and widget.disk_cache is not None and widget.disk_cache.writes >= 1
    assert widget.disk_cache.root == tmp_path / "embeddings"  # the command line's default

    again: list = []
    widget.model_factory = _tiny_factory(encodes=again)  # a new model: its memory is empty
    run_and_wait(qtbot, widget)
    assert again == []
    assert widget.disk_cache.hits >= 1 and widget.disk_cache.writes == 0

    widget.cache_on_disk.value = False
    off: list = []
    widget.model_factory = _tiny_factory(encodes=off)
    run_and_wait(qtbot, widget)
    assert off and widget.disk_cache is None


def test_a_concept_file_is_prompted_as_it_was_learned(viewer, open_widget, qtbot, tmp_path):
    viewer.add_image(squares((32, 32)), name="img")
    viewer.add_labels(_painted((32, 32), 1), name="ref")
    widget = open_widget()
    widget.prompt_mode.value = "part-aware"
    widget.min_parts.value, widget.max_parts.value = 2, 3
    widget.max_negative_parts.value = 0
    run_and_wait(qtbot, widget)
    path = widget.export_concept(tmp_path / "parts.npz")

    widget.prompt_mode.value = "persam"  # what the user last chose: the file decides
    widget.min_parts.value, widget.max_parts.value = 1, 5
    widget.max_negative_parts.value = 1
    widget.load_concept(path)
    run_and_wait(qtbot, widget)
    assert widget.status.value.startswith("Done"), widget.status.value
    used = widget.last_concept.config
    assert (used.prompt_mode, used.min_parts, used.max_parts) == ("part-aware", 2, 3)
    assert used.max_negative_parts == 0
    assert widget.prompt_mode.value == "part-aware"  # the controls show what was used
    assert (widget.min_parts.value, widget.max_parts.value) == (2, 3)
    assert widget.max_negative_parts.value == 0
