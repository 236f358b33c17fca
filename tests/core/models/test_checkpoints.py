"""Finding, downloading and verifying checkpoints, against a loopback HTTP server only."""

from __future__ import annotations

import dataclasses
import itertools
import os
import time
from collections import namedtuple
from pathlib import Path

import pytest

from napari_persam.core.models import checkpoints as weights
from napari_persam.core.models import download as downloads
from napari_persam.core.models.checkpoints import (
    MIRROR_ENV,
    ChecksumError,
    DownloadError,
    cache_status,
    iter_checkpoint_sha256,
    iter_ensure_checkpoint,
    read_record,
)
from napari_persam.core.paths import CACHE_ENV, checkpoints_dir
from napari_persam.core.progress import run
from tests._checkpoints import sha256, stand_in
from tests._http_server import LoopbackServer

FILENAME = "sam_vit_b_01ec64.pth"


def ensure_checkpoint(spec, **where):
    return run(iter_ensure_checkpoint(spec, **where))


def checkpoint_sha256(path):
    return run(iter_checkpoint_sha256(path))


@pytest.fixture(autouse=True)
def _default_locations(monkeypatch):
    # tests/conftest.py already keeps every test on 127.0.0.1; these tests also
    # check where files go by default, so the cache and mirror variables are unset.
    monkeypatch.delenv(CACHE_ENV, raising=False)
    monkeypatch.delenv(MIRROR_ENV, raising=False)


@pytest.fixture
def server():
    with LoopbackServer() as running:
        yield running


@pytest.fixture(scope="module")
def vit_b_stand_in():
    return stand_in("vit_b")


@pytest.fixture
def served(server, vit_b_stand_in):
    """(server, spec pointing at it, file body)."""
    url = server.add(FILENAME, vit_b_stand_in.body)
    spec = dataclasses.replace(vit_b_stand_in.spec, url=url)
    return server, spec, vit_b_stand_in.body


def leftovers(folder: Path) -> list[str]:
    """Files in ``folder`` other than checkpoints and their records."""
    return sorted(p.name for p in folder.iterdir() if p.suffix == ".part" or ".tmp" in p.name)


# ------------------------------------------------------------------ where files go
def test_cache_folder_default_env_and_explicit(monkeypatch, tmp_path):
    assert "napari-persam" in str(checkpoints_dir())
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "from-env"))
    assert checkpoints_dir() == tmp_path / "from-env"
    assert checkpoints_dir(tmp_path / "explicit") == tmp_path / "explicit"


def test_registry_hashes_are_well_formed():
    from napari_persam.core.models import MODEL_REGISTRY

    for spec in MODEL_REGISTRY.values():
        if spec.downloadable:
            assert len(spec.sha256) == 64 and int(spec.sha256, 16) >= 0
            assert spec.url.startswith("https://") and spec.url.endswith(spec.filename)
            assert spec.size > 10_000_000


# ---------------------------------------------------------------------- downloads
def test_download_reports_byte_progress_and_verifies(served, tmp_path):
    server, spec, body = served
    steps = []
    path = run(iter_ensure_checkpoint(spec, cache_dir=tmp_path), on_progress=steps.append)

    assert path == tmp_path / FILENAME
    assert path.read_bytes() == body
    assert steps[0].done == 0 and steps[0].total == len(body)
    assert steps[-1].done == steps[-1].total == len(body)
    assert all(a.done <= b.done for a, b in itertools.pairwise(steps))
    assert all("downloading" in step.message for step in steps)
    assert read_record(path) == sha256(body)
    assert cache_status(spec, cache_dir=tmp_path) == weights.VERIFIED
    assert server.count(FILENAME) == 1
    assert leftovers(tmp_path) == []


def test_second_call_uses_the_cache_without_network_or_rehashing(served, tmp_path, monkeypatch):
    server, spec, _ = served
    first = ensure_checkpoint(spec, cache_dir=tmp_path)
    server.stop()
    hashed = []
    real_iter_sha256 = weights.iter_sha256

    def counting(path, **kwargs):
        hashed.append(Path(path))
        return real_iter_sha256(path, **kwargs)

    monkeypatch.setattr(weights, "iter_sha256", counting)
    assert ensure_checkpoint(spec, cache_dir=tmp_path) == first
    assert hashed == []  # the record says it was verified as it is

    stat = first.stat()
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert cache_status(spec, cache_dir=tmp_path) == weights.NOT_VERIFIED
    assert ensure_checkpoint(spec, cache_dir=tmp_path) == first
    assert hashed == [first]  # a changed file is verified again


def test_corrupted_download_is_retried_once_then_a_clear_error(served, tmp_path):
    server, spec, _ = served
    server.mode = "corrupt"
    steps = []
    with pytest.raises(ChecksumError) as info:
        run(iter_ensure_checkpoint(spec, cache_dir=tmp_path), on_progress=steps.append)
    message = str(info.value)
    assert server.count(FILENAME) == 2
    assert steps[-1].message == f"downloading {FILENAME} (try 2)"
    assert "failed verification 2 times" in message
    assert spec.url in message and FILENAME in message and str(tmp_path) in message
    assert list(tmp_path.iterdir()) == []


def test_truncated_file_from_the_server_is_rejected(served, tmp_path):
    server, spec, body = served
    server.mode = "short"
    with pytest.raises(ChecksumError, match=f"received {len(body) // 2:,} bytes"):
        ensure_checkpoint(spec, cache_dir=tmp_path)
    assert server.count(FILENAME) == 2
    assert list(tmp_path.iterdir()) == []


def test_broken_transfer_is_retried_once_then_reported(served, tmp_path):
    server, spec, _ = served
    server.mode = "cut"
    with pytest.raises(DownloadError, match="the transfer broke after") as info:
        ensure_checkpoint(spec, cache_dir=tmp_path)
    assert server.count(FILENAME) == 2
    assert str(tmp_path) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_server_down_gives_an_offline_message_naming_url_file_and_folder(served, tmp_path):
    server, spec, _ = served
    server.stop()
    with pytest.raises(DownloadError) as info:
        ensure_checkpoint(spec, cache_dir=tmp_path)
    message = str(info.value)
    assert "no connection" in message and "offline" in message
    assert spec.url in message
    assert f"put it in {tmp_path} named {FILENAME}" in message
    assert spec.sha256 in message
    assert leftovers(tmp_path) == []


def test_http_error_is_named(served, tmp_path):
    server, spec, _ = served
    missing = dataclasses.replace(spec, url=server.url("nothing-here.pth"))
    with pytest.raises(DownloadError, match="HTTP 404"):
        ensure_checkpoint(missing, cache_dir=tmp_path)
    assert server.count("nothing-here.pth") == 1  # a 404 is not worth retrying


def test_closing_the_generator_cancels_and_leaves_no_partial_file(served, tmp_path):
    server, spec, _ = served
    server.chunk_delay = 0.05  # ~5 s for the whole file: the download is still running
    work = iter_ensure_checkpoint(spec, cache_dir=tmp_path)
    for step in work:
        if step.done > 0:
            break
    work.close()
    assert list(tmp_path.iterdir()) == []


def test_not_enough_disk_space_is_reported_before_downloading(served, tmp_path, monkeypatch):
    server, spec, _ = served
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(weights.shutil, "disk_usage", lambda _: usage(10, 10, 0))
    with pytest.raises(DownloadError, match="Not enough space"):
        ensure_checkpoint(spec, cache_dir=tmp_path)
    assert server.count(FILENAME) == 0


# -------------------------------------------------------- overrides and hand-placed files
def test_mirror_env_var_replaces_the_publisher(server, vit_b_stand_in, tmp_path, monkeypatch):
    server.add("mirror/" + FILENAME, vit_b_stand_in.body)
    monkeypatch.setenv(MIRROR_ENV, server.url("mirror/"))
    spec = vit_b_stand_in.spec  # still the publisher's URL; the guard blocks it
    assert ensure_checkpoint(spec, cache_dir=tmp_path).read_bytes() == vit_b_stand_in.body
    assert server.count("mirror/" + FILENAME) == 1


def test_url_parameter_and_env_cache_folder(server, vit_b_stand_in, tmp_path, monkeypatch):
    url = server.add("elsewhere.pth", vit_b_stand_in.body)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    path = ensure_checkpoint(vit_b_stand_in.spec, url=url)
    assert path == tmp_path / "cache" / FILENAME


def test_file_placed_by_hand_is_found_offline(vit_b_stand_in, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    (tmp_path / FILENAME).write_bytes(vit_b_stand_in.body)
    spec = dataclasses.replace(vit_b_stand_in.spec, url="http://127.0.0.1:9/unreachable.pth")
    assert cache_status(spec) == weights.NOT_VERIFIED
    assert ensure_checkpoint(spec) == tmp_path / FILENAME
    assert cache_status(spec) == weights.VERIFIED


def test_partial_file_in_the_cache_is_replaced(served, tmp_path):
    server, spec, body = served
    (tmp_path / FILENAME).write_bytes(body[:1000])
    assert cache_status(spec, cache_dir=tmp_path) == weights.WRONG_SIZE
    assert ensure_checkpoint(spec, cache_dir=tmp_path).read_bytes() == body
    assert server.count(FILENAME) == 1


def test_corrupted_cached_file_and_no_network_explains_both(served, tmp_path):
    server, spec, body = served
    (tmp_path / FILENAME).write_bytes(bytes(reversed(body)))
    server.stop()
    with pytest.raises(DownloadError) as info:
        ensure_checkpoint(spec, cache_dir=tmp_path)
    message = str(info.value)
    assert "failed verification" in message and "was deleted" in message
    assert "no connection" in message
    assert not (tmp_path / FILENAME).exists()


# ------------------------------------------------------------------------- hashing
def test_checkpoint_sha256_matches_hashlib_and_reuses_records(tmp_path, monkeypatch):
    path = tmp_path / "weights.pth"
    path.write_bytes(b"some weights" * 1000)
    expected = sha256(path.read_bytes())
    assert checkpoint_sha256(path) == expected

    weights.write_record(path, "0" * 64)  # a record for the file as it is now wins
    assert checkpoint_sha256(path) == "0" * 64
    path.write_bytes(b"other weights")  # the record no longer describes the file
    assert read_record(path) is None
    assert checkpoint_sha256(path) == sha256(b"other weights")


def test_stale_part_files_from_killed_downloads_are_removed(served, tmp_path):
    _, spec, _ = served
    stale = tmp_path / f"{FILENAME}.abc123.part"
    fresh = tmp_path / f"{FILENAME}.def456.part"  # another process downloading now
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")
    day_ago = time.time() - downloads.STALE_PART_AGE_S - 60
    os.utime(stale, (day_ago, day_ago))
    ensure_checkpoint(spec, cache_dir=tmp_path)
    assert not stale.exists()
    assert fresh.exists()
