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
from napari_persam.core.progress import Progress, run


def _job(model: str = "tiny", targets: int = 2) -> Job:
    stack = np.random.default_rng(0).random((targets, 32, 32)).astype(np.float32)
    mask = np.zeros((32, 32), bool)
    mask[4:12, 4:12] = True
    return Job(
        model=ModelChoice(model, None, "cpu"),
        config=PerSAMConfig(min_area_fraction=0.0),
        finetune=False,
        shots=((stack[0].copy(), mask.astype(np.int32)),),
        values=(1,),
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


def test_offline_download_fails_with_where_to_put_the_file(tmp_path):
    from napari_persam.core.models import iter_load_model

    # Port 1 on the loopback refuses at once: the same as having no connection.
    def offline(name, *, checkpoint, device):
        url = "http://127.0.0.1:1/sam_vit_b_01ec64.pth"
        return iter_load_model(name, checkpoint=checkpoint, device=device,
                               cache_dir=tmp_path, url=url)  # fmt: skip

    # WeightsError is a RuntimeError, passed on as a RunError with the same message.
    with pytest.raises(RunError) as raised:
        run(run_job(_job("vit_b"), models=LoadedModels(offline)))
    message = str(raised.value)
    assert "http://127.0.0.1:1/sam_vit_b_01ec64.pth" in message
    assert "sam_vit_b_01ec64.pth" in message and str(tmp_path) in message


def test_download_steps_count_bytes_and_name_megabytes(tiny_sam):
    def downloading(name, *, checkpoint, device):
        for done in (0, 2_500_000, 5_000_000):
            yield Progress(done, 5_000_000, "downloading mobile_sam.pt")
        return tiny_sam

    steps = []
    run(run_job(_job(), models=LoadedModels(downloading)), on_progress=steps.append)
    loading = [step for step in steps if step.message.startswith("downloading")]
    assert [(step.done, step.total) for step in loading] == [
        (0, 5_000_000), (2_500_000, 5_000_000), (5_000_000, 5_000_000)
    ]  # fmt: skip
    assert loading[1].message == "downloading mobile_sam.pt (2.5 of 5.0 MB)"


def test_several_values_and_shots_reach_the_engine(tiny_sam):
    """Two classes from two shots; the results hold the reference's values."""
    stack = np.random.default_rng(1).random((3, 32, 32)).astype(np.float32)
    labels = np.zeros((32, 32), np.int32)
    labels[2:10, 2:10], labels[20:28, 20:28] = 4, 9
    second = np.zeros((32, 32), np.int32)
    second[12:20, 4:12] = 9
    job = dataclasses.replace(
        _job(targets=3),
        shots=((stack[0], labels), (stack[1], second)),
        values=(4, 9),
        targets=slice_targets(stack, output="stack", slices=range(3)),
        reference_index=1,
    )

    def factory(name, *, checkpoint, device):
        return tiny_sam
        yield

    steps = []
    run(run_job(job, models=LoadedModels(factory)), on_progress=steps.append)
    assert "learning 2 label values from 2 reference(s)" in [step.message for step in steps]
    results = [step for step in steps if step.result is not None]
    assert [step.index for step in results] == [1, 2, 0]  # outward from the reference
    for step in results:
        assert step.result.labels.dtype == np.int32 and step.result.classes is None
        assert set(np.unique(step.result.labels)) <= {0, 4, 9}
        assert step.result.similarity.shape == (32, 32)

    instances = dataclasses.replace(
        job,
        instances=True,
        config=PerSAMConfig(min_area_fraction=0.0, instance_threshold=-1.0, max_instances=3),
    )
    steps = []
    run(run_job(instances, models=LoadedModels(factory)), on_progress=steps.append)
    for step in (step for step in steps if step.result is not None):
        result = step.result
        ids = set(np.unique(result.labels)) - {0}
        assert result.objects == len(ids) and result.classes is not None
        assert set(np.unique(result.classes)) <= {0, 4, 9}
        assert np.array_equal(result.classes > 0, result.labels > 0)
