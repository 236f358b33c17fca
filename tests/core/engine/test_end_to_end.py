"""PerSAM finds the right object when the features mean something.

The stand-in encoder describes patches by colour and texture (tests/synthetic.py);
each seeded scene has one striped red object among a flat red, a striped green and
a flat blue distractor at random places, sizes and shapes.
"""

import numpy as np

from napari_persam.core import PerSAM, PerSAMConfig
from tests.synthetic import make_scene, standin_sam

SCENES = 40


def test_positive_prompt_lands_in_the_target_in_95_percent_of_scenes():
    # Only the prompts are under test: no refinement keeps the decoder calls few.
    engine = PerSAM(standin_sam(), config=PerSAMConfig(refinement_steps=0), device="cpu")
    reference, labels = make_scene(seed=0)
    concept = engine.learn(reference, labels > 0)
    hits = 0
    for seed in range(1, SCENES + 1):
        image, truth = make_scene(seed=1000 + seed)
        seg = engine.segment(image, concept)
        y, x = seg.points[0].astype(int)
        hits += bool(truth[y, x])
        # the similarity map separates the target from every distractor
        assert seg.similarity[truth > 0].mean() > seg.similarity[truth == 0].mean()
    assert hits / SCENES >= 0.95


def test_negative_prompt_lands_outside_the_target():
    engine = PerSAM(standin_sam(), config=PerSAMConfig(refinement_steps=0), device="cpu")
    reference, labels = make_scene(seed=0)
    concept = engine.learn(reference, labels > 0)
    for seed in range(1, 11):
        image, truth = make_scene(seed=2000 + seed)
        y, x = engine.segment(image, concept).points[1].astype(int)
        assert not truth[y, x]


def test_non_square_scenes_stay_aligned():
    engine = PerSAM(standin_sam(), config=PerSAMConfig(refinement_steps=0), device="cpu")
    reference, labels = make_scene(seed=0, shape=(160, 320))
    concept = engine.learn(reference, labels > 0)
    hits = 0
    for seed in range(1, 11):
        image, truth = make_scene(seed=3000 + seed, shape=(320, 160))
        y, x = engine.segment(image, concept).points[0].astype(int)
        hits += bool(truth[y, x])
    assert hits >= 9
    assert np.isfinite(concept.target_embedding).all()
