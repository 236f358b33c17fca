"""The worker's generator without Qt: model loading once, errors that reach the user."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from napari_persam._widgets._runner import (
    Job,
    LoadedModels,
    ModelChoice,
    RunError,
    run_job,
    slice_targets,
)
from napari_persam.core.config import PerSAMConfig
from napari_persam.core.progress import run


def _job(model: str = "tiny", targets: int = 2) -> Job:
    stack = np.random.default_rng(0).random((targets, 32, 32)).astype(np.float32)
    mask = np.zeros((32, 32), bool)
    mask[4:12, 4:12] = True
    return Job(
        model=ModelChoice(model, None, "cpu"),
        config=PerSAMConfig(min_area_fraction=0.0),
        finetune=False,
        reference_image=stack[0].copy(),
        reference_mask=mask,
        targets=slice_targets(stack, output="stack", slices=range(targets)),
    )


def test_results_arrive_one_by_one_and_the_model_is_loaded_once(tiny_sam):
    calls = []

    def factory(name, *, checkpoint, device):
        calls.append(name)
        return tiny_sam
        yield

    models = LoadedModels(factory)
    steps = []
    assert run(run_job(_job(), models=models), on_progress=steps.append) == 2
    results = [step for step in steps if step.result is not None]
    assert [step.index for step in results] == [0, 1]
    assert all(step.result.similarity.shape == (32, 32) for step in results)
    run(run_job(_job(), models=models))
    assert calls == ["tiny"] and len(models) == 1
    other = dataclasses.replace(_job(), model=ModelChoice("tiny", None, "auto"))
    run(run_job(other, models=models))
    assert calls == ["tiny", "tiny"] and len(models) == 1  # only the latest model is kept


def test_runtime_errors_are_passed_on_as_run_errors():
    def factory(name, *, checkpoint, device):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        yield

    with pytest.raises(RunError, match="CUDA out of memory"):
        run(run_job(_job(), models=LoadedModels(factory)))


def test_a_missing_checkpoint_is_the_core_message():
    with pytest.raises(ValueError, match="No checkpoint given for model 'vit_b'"):
        run(run_job(_job("vit_b"), models=LoadedModels()))
