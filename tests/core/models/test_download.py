"""One download, streamed and hashed without a thread, against a loopback server only."""

from __future__ import annotations

import hashlib
import threading

import pytest

from napari_persam.core.models.download import iter_download
from napari_persam.core.models.errors import ChecksumError, DownloadError
from napari_persam.core.progress import run
from tests._http_server import LoopbackServer

BODY = bytes(range(256)) * 12_000  # about 3 MB: several chunks


@pytest.fixture
def server():
    with LoopbackServer() as running:
        yield running


def _download(url, folder, **overrides):
    options = {"size": len(BODY), "sha256": hashlib.sha256(BODY).hexdigest()}
    options.update(overrides)
    return iter_download(url, folder / "w.pth", **options)


def test_bytes_arrive_as_progress_without_a_thread(server, tmp_path, monkeypatch):
    url = server.add("w.pth", BODY)
    steps = []
    here = threading.current_thread()
    started = []  # threads started from this one while downloading
    original_start = threading.Thread.start

    def start(thread):
        if threading.current_thread() is here:
            started.append(thread.name)
        return original_start(thread)

    def note(step):
        assert threading.current_thread() is here  # progress comes from the caller's thread
        steps.append(step)

    monkeypatch.setattr(threading.Thread, "start", start)
    path = run(_download(url, tmp_path), on_progress=note)
    assert path.read_bytes() == BODY
    assert steps[0].done == 0 and steps[-1].done == len(BODY)
    assert len(steps) > 3 and all(step.total == len(BODY) for step in steps)
    assert started == []  # nothing runs beside the generator
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.pth"]


def test_wrong_bytes_are_deleted_and_named(server, tmp_path):
    url = server.add("w.pth", BODY)
    with pytest.raises(ChecksumError, match="SHA-256"):
        run(_download(url, tmp_path, sha256="0" * 64))
    with pytest.raises(ChecksumError, match="received"):
        run(_download(url, tmp_path, size=len(BODY) + 1))
    assert list(tmp_path.iterdir()) == []


def test_http_errors_say_whether_trying_again_may_help(server, tmp_path):
    with pytest.raises(DownloadError, match="HTTP 404") as missing:
        run(_download(server.url("nothing.pth"), tmp_path))
    assert missing.value.retry is False
    url = server.add("w.pth", BODY)
    server.mode = "cut"
    with pytest.raises(DownloadError, match="transfer broke") as broken:
        run(_download(url, tmp_path))
    assert broken.value.retry is True
    server.stop()
    with pytest.raises(DownloadError, match="no connection") as offline:
        run(_download(url, tmp_path))
    assert offline.value.retry is False
    assert list(tmp_path.iterdir()) == []


def test_closing_mid_transfer_stops_and_removes_the_partial_file(server, tmp_path):
    url = server.add("w.pth", BODY)
    server.chunk_delay = 0.05
    work = _download(url, tmp_path)
    for step in work:
        if step.done > 0:
            break
    work.close()
    assert list(tmp_path.iterdir()) == []
