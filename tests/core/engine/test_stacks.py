"""Stacks: propagation outward from the reference slice, ids kept through the stack."""

import dataclasses

import numpy as np
import pytest

from napari_persam.core import PerSAM, PerSAMConfig, run
from napari_persam.core.engine.stacks import slice_order
from napari_persam.core.engine.steering import enlarged_box, inner_point
from tests.synthetic import DISTRACTORS, TARGET, paint_object, plain_background, semantic_sam

UNGUIDED = PerSAMConfig(target_guided_attention=False, semantic_prompt=False)
SHAPE = (192, 192)


@pytest.fixture(scope="module")
def engine():
    return PerSAM(semantic_sam(img_size=512), config=UNGUIDED, device="cpu")


def drifting_stack(tracks, *, depth, seed, distractor=None):
    """Stack whose objects follow ``tracks``: list of (start (y, x), step (dy, dx)).

    Returns the stack (Z, H, W, 3) uint8 and the truth (Z, H, W) int32 with object k
    labelled k + 1 in every slice it is in (a None start hides it from that slice).
    """
    stack = np.empty((depth, *SHAPE, 3), dtype=np.uint8)
    truth = np.zeros((depth, *SHAPE), dtype=np.int32)
    for z in range(depth):
        stack[z] = plain_background(SHAPE, seed=seed + z)
        for k, track in enumerate(tracks):
            centre = track(z)
            if centre is None:
                continue
            truth[z][paint_object(stack[z], centre, 20, TARGET, seed=seed + 100 * k + z)] = k + 1
        if distractor is not None:
            paint_object(stack[z], distractor, 20, DISTRACTORS[2], seed=seed + 7)
    return stack, truth


def moving(start, step):
    return lambda z: (start[0] + step[0] * z, start[1] + step[1] * z)


def test_slice_order_goes_outward_from_the_reference():
    assert slice_order(range(5), 2) == [(2, None), (3, 2), (4, 3), (1, 2), (0, 1)]
    assert slice_order([7, 8, 9], 2) == [(7, None), (8, 7), (9, 8)]
    assert slice_order([], 0) == []


def test_prompt_geometry_helpers():
    crescent = np.zeros((40, 40), dtype=bool)
    crescent[5:35, 5:35] = True
    crescent[10:30, 15:40] = False
    y, x = inner_point(crescent).astype(int)
    assert crescent[y, x]
    np.testing.assert_allclose(
        enlarged_box(np.array([10, 10, 19, 29]), 0.1, (40, 40)), [9, 8, 20, 31]
    )


def test_propagation_follows_the_painted_object_among_look_alikes(engine):
    # Two identical objects drift towards each other's old places; the reference is
    # painted on the first one in the middle slice.
    tracks = [moving((50, 40), (3, 4)), moving((140, 150), (-3, -4))]
    stack, truth = drifting_stack(tracks, depth=7, seed=10)
    reference_z = 3
    concept = engine.learn(stack[reference_z], truth[reference_z] == 1)
    results = run(
        engine.segment_stack(stack, concept, reference_index=reference_z, mode="propagate")
    )
    assert sorted(results) == list(range(7))
    for z, seg in results.items():
        assert seg.found, z
        assert np.mean(truth[z][seg.mask] == 1) > 0.8, f"slice {z} jumped to the other object"


def test_instances_keep_their_ids_through_the_stack(engine):
    tracks = [moving((40, 40), (2, 3)), moving((40, 150), (3, -2)), moving((150, 90), (-3, 1))]
    stack, truth = drifting_stack(tracks, depth=6, seed=20, distractor=(160, 20))
    concept = engine.learn(stack[0], truth[0] == 2)
    seen = []
    results = run(
        engine.segment_stack(stack, concept, reference_index=0, instances=True),
        on_progress=seen.append,
    )
    assert [step.index for step in seen] == list(range(6))
    ids_per_object = {k: set() for k in (1, 2, 3)}
    for z, found in results.items():
        assert found.count == 3, z
        for k in (1, 2, 3):
            values, counts = np.unique(found.labels[truth[z] == k], return_counts=True)
            ids_per_object[k].add(int(values[np.argmax(counts)]))
    for k, ids in ids_per_object.items():
        assert len(ids) == 1 and 0 not in ids, (k, ids)
    assert len(set.union(*ids_per_object.values())) == 3


def test_a_vanished_object_stops_steering_and_is_found_again(engine):
    def track(z):
        if z in (2, 3):
            return None  # out of the stack's view
        return (50, 50) if z < 2 else (140, 140)

    stack, truth = drifting_stack([track], depth=6, seed=30, distractor=(50, 150))
    concept = engine.learn(stack[0], truth[0] == 1)
    results = run(engine.segment_stack(stack, concept, reference_index=0))
    for z in (4, 5):
        assert np.mean(truth[z][results[z].mask] == 1) > 0.8


def test_independent_mode_and_slice_choice(engine):
    stack, truth = drifting_stack([moving((60, 60), (2, 2))], depth=4, seed=40)
    concept = engine.learn(stack[1], truth[1] == 1)
    results = run(
        engine.segment_stack(stack, concept, reference_index=1, slices=[2, 3], mode="independent")
    )
    assert sorted(results) == [2, 3]
    with pytest.raises(ValueError, match="outside the stack"):
        run(engine.segment_stack(stack, concept, reference_index=1, slices=[9]))
    with pytest.raises(ValueError, match="stack mode"):
        run(engine.segment_stack(stack, concept, reference_index=1, mode="sideways"))


def test_stack_with_classes(engine):
    stack, truth = drifting_stack(
        [moving((50, 50), (2, 2))], depth=3, seed=50, distractor=(140, 140)
    )
    labels = np.zeros(SHAPE, dtype=np.int32)
    labels[truth[0] == 1] = 4
    blue = np.zeros(SHAPE, dtype=bool)
    yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
    blue[(yy - 140) ** 2 + (xx - 140) ** 2 <= 18**2] = True
    labels[blue] = 9
    classes = engine.learn_classes(stack[0], labels)
    results = run(engine.segment_stack(stack, classes, reference_index=0))
    for z, result in results.items():
        assert np.mean(result.labels[truth[z] == 1] == 4) > 0.5
        assert np.mean(result.labels[blue] == 9) > 0.5
    config = dataclasses.replace(UNGUIDED, stack_mode="independent")
    assert PerSAM(engine.sam, config=config, device="cpu").config.stack_mode == "independent"


def test_without_keep_results_only_the_neighbours_propagation_needs_stay(engine):
    import gc
    import weakref

    tracks = [moving((50, 40), (3, 4))]
    stack, truth = drifting_stack(tracks, depth=7, seed=60)
    concept = engine.learn(stack[3], truth[3] == 1)
    kept = run(engine.segment_stack(stack, concept, reference_index=3, mode="propagate"))
    alive, masks = [], {}
    work = engine.segment_stack(
        stack, concept, reference_index=3, mode="propagate", keep_results=False
    )
    try:
        while True:
            step = next(work)
            masks[step.index] = step.result.mask.copy()
            alive.append(weakref.ref(step.result))
            del step
            gc.collect()
            # the reference slice (start of the downward walk) and the last one at most
            assert sum(ref() is not None for ref in alive) <= 2
    except StopIteration as stop:
        assert stop.value == {}
    assert sorted(masks) == sorted(kept)
    for z, mask in masks.items():
        np.testing.assert_array_equal(mask, kept[z].mask)


def test_slices_are_read_ahead_while_the_current_one_is_encoded(engine):
    import threading

    from napari_persam.core.engine.segmenter import ImageSegmenter
    from napari_persam.core.engine.stacks import iter_segment_stack

    stack, truth = drifting_stack([moving((60, 60), (2, 2))], depth=4, seed=70)
    concept = engine.learn(stack[0], truth[0] == 1)
    started = {z: threading.Event() for z in range(4)}
    waited_in_vain = []

    class Recording:
        shape = stack.shape

        def __getitem__(self, z):
            started[z].set()
            return stack[z]

    encoded = []

    def embed(image):
        k = len(encoded)
        encoded.append(k)
        # Encoding slice k waits for the read of slice k + 1 to begin: only a read
        # running beside the encoding lets it go on (a sequential loop reads after).
        if k + 1 < 4 and not started[k + 1].wait(timeout=10):
            waited_in_vain.append(k)
        return engine.embed(image)

    segmenter = ImageSegmenter(
        engine.prompter, embed, engine.embed_tile, grid=engine.segmenter.grid
    )
    run(iter_segment_stack(Recording(), concept, segmenter=segmenter, reference_index=0))
    assert encoded == [0, 1, 2, 3]
    assert waited_in_vain == []
