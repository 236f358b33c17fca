"""Running batch segmentation on a Dask cluster (``dask.distributed``).

One task per image or slice. What travels to the workers is plain data: an
:class:`~napari_persam.core.engine_builder.EngineSpec` (model name, checkpoint path,
device, engine options, cache) and the bytes of a concept file. Each worker
process builds the engine once per spec with
:func:`~napari_persam.core.engine_builder.build_engine` and keeps it (a per-process
registry keyed by the spec), reads its own inputs and writes its own outputs with
:func:`napari_persam.core.batch.run.run_item`, the function a single-process run
uses, so both give the same files.

Workers must see the same paths as the machine that starts the run (inputs,
``--out``, the checkpoint and the cache folder): local clusters always do; for a
remote scheduler use a shared file system.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_persam.core.batch.plan import SegmentOptions, WorkItem, failure_record, skipped_record
from napari_persam.core.batch.run import run_item
from napari_persam.core.devices import keep_freed_memory
from napari_persam.core.engine_builder import EngineSpec, build_engine
from napari_persam.core.progress import Progress, ProgressGenerator

if TYPE_CHECKING:  # pragma: no cover
    from napari_persam.core.engine.concepts import Concept
    from napari_persam.core.engine.persam import PerSAM

#: How often a failed task runs again before it is reported as failed.
TASK_RETRIES = 1


# Per-process registries: a worker keeps its engine (and parsed concepts) across tasks.
_ENGINES: dict[EngineSpec, PerSAM] = {}
_CONCEPTS: dict[str, dict[int, Concept]] = {}
_LOCK = threading.Lock()


def engine_for(spec: EngineSpec) -> PerSAM:
    """The engine for ``spec`` in this process, built on first use.

    Workers must run with the caller's thread count (``spec.torch_threads``):
    another count changes the order of floating-point sums, so scores may then
    differ in the last bits.
    """
    with _LOCK:
        engine = _ENGINES.get(spec)
        if engine is None:
            if os.environ.get(_OWNED_WORKER) == "1":
                # A worker process we started: keep freed memory in the heap (no
                # page-fault storm per image), all threads on one arena (tasks run in
                # threads). Never in a worker of the user's own cluster, nor in a
                # worker thread inside the user's process: those processes are theirs.
                keep_freed_memory(single_arena=True)
            engine = build_engine(spec)
            _ENGINES[spec] = engine
        return engine


# Set in the worker processes of the LocalCluster we start, and nowhere else.
_OWNED_WORKER = "NAPARI_PERSAM_OWNED_WORKER"


def concepts_from_bytes(payload: bytes) -> dict[int, Concept]:
    """Parsed concepts of a concept file's bytes, parsed once per process."""
    from napari_persam.core.io.concept_file import concept_file_from_bytes

    digest = hashlib.sha256(payload).hexdigest()
    with _LOCK:
        concepts = _CONCEPTS.get(digest)
        if concepts is None:
            concepts = concept_file_from_bytes(payload).concepts
            _CONCEPTS[digest] = concepts
        return concepts


def model_identity(spec: EngineSpec) -> tuple[str, str]:
    """(model name, fingerprint) of the engine a worker builds (checked before a run)."""
    engine = engine_for(spec)
    return engine.model_name, engine.fingerprint


def segment_task(
    spec: EngineSpec,
    concept_bytes: bytes,
    item: WorkItem,
    options: SegmentOptions,
    dtype: str,
) -> dict[str, Any]:
    """One Dask task: segment ``item`` on this worker and write its output."""
    return run_item(
        engine_for(spec),
        concepts_from_bytes(concept_bytes),
        item,
        options=options,
        dtype=np.dtype(dtype),
    )


class DaskRunner:
    """A Dask client for a run: a local cluster of worker processes, or an existing scheduler.

    Parameters
    ----------
    workers : int, optional
        Start a :class:`distributed.LocalCluster` of this many single-threaded
        worker processes listening on 127.0.0.1 only.
    scheduler : str, optional
        Address of an existing scheduler (``tcp://HOST:PORT``).
    timeout_s : float
        How long to wait for the scheduler.

    Use as a context manager; the local cluster is shut down on exit.
    """

    def __init__(
        self, *, workers: int | None = None, scheduler: str | None = None, timeout_s: float = 30
    ) -> None:
        if (workers is None) == (scheduler is None):
            raise ValueError("Give either workers (a local cluster) or scheduler (an address).")
        if workers is not None and workers < 1:
            raise ValueError(f"workers must be 1 or more, got {workers}.")
        self.workers = workers
        self.scheduler = scheduler
        self.timeout_s = timeout_s
        self.cluster: Any = None
        self.client: Any = None

    def __enter__(self) -> DaskRunner:
        from distributed import Client, LocalCluster

        if self.scheduler is not None:
            try:
                self.client = Client(self.scheduler, timeout=self.timeout_s)
            except OSError as error:
                raise ValueError(
                    f"Could not reach the Dask scheduler at {self.scheduler!r} ({error}); "
                    "check the address (tcp://HOST:PORT) and that the scheduler runs."
                ) from error
            return self
        self.cluster = LocalCluster(
            n_workers=self.workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
            silence_logs=logging.CRITICAL,  # failures are reported per item,
            env={_OWNED_WORKER: "1"},
        )
        self.client = Client(self.cluster)
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()

    def model_identity(self, spec: EngineSpec) -> tuple[str, str]:
        """Build the model on one worker and return its (name, fingerprint)."""
        return self.client.submit(model_identity, spec, pure=False).result()

    def iter_run(
        self,
        spec: EngineSpec,
        concept_bytes: bytes,
        items: Sequence[WorkItem],
        *,
        options: SegmentOptions,
        dtype: np.dtype,
    ) -> ProgressGenerator[list[dict[str, Any]]]:
        """Run ``items`` on the cluster; yields progress as tasks finish, returns records.

        Items finished by an earlier run are skipped without a task. A task that
        raises is run once more (``TASK_RETRIES``) and then recorded as failed.
        """
        from distributed import as_completed

        records: list[dict[str, Any] | None] = [None] * len(items)
        done = 0
        pending = {}
        concept_future = self.client.scatter(concept_bytes, broadcast=True)
        run_id = uuid.uuid4().hex[:8]
        for position, item in enumerate(items):
            if item.is_finished():
                records[position] = skipped_record(item)
                done += 1
                yield Progress(
                    done, len(items), f"skipped: {item.label}", position, records[position]
                )
                continue
            future = self.client.submit(
                segment_task,
                spec,
                concept_future,
                item,
                options,
                dtype.str,
                key=f"persam-{run_id}-{position}",
                retries=TASK_RETRIES,
                pure=False,
            )
            pending[future] = position
        for future in as_completed(list(pending)):
            position = pending[future]
            try:
                record = future.result()
            except Exception as error:
                record = failure_record(items[position], error)
                suffix = f" (failed {TASK_RETRIES + 1} times)"
                record["error"] += suffix
                if "error_template" in record:
                    record["error_template"] += suffix
            records[position] = record
            done += 1
            yield Progress(
                done, len(items), f"{record['status']}: {items[position].label}", position, record
            )
        return [record for record in records if record is not None]
