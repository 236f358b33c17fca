"""``napari-persam models list | download | verify``, against a loopback server only."""

from __future__ import annotations

import dataclasses

import pytest

from napari_persam._cli.common import EXIT_BAD_ARGUMENTS, EXIT_OK, EXIT_SOME_FAILED
from napari_persam.cli import main
from napari_persam.core.models import MODEL_REGISTRY
from napari_persam.core.models import checkpoints as weights
from tests._checkpoints import stand_in
from tests._http_server import LoopbackServer, block_internet

VIT_B_FILE = "sam_vit_b_01ec64.pth"
VIT_T_FILE = "mobile_sam.pt"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    block_internet(monkeypatch)
    monkeypatch.setenv(weights.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(weights.MIRROR_ENV, raising=False)


@pytest.fixture
def server(monkeypatch):
    """vit_b and vit_t replaced by small stand-ins served on 127.0.0.1."""
    with LoopbackServer() as running:
        for name in ("vit_b", "vit_t"):
            model = stand_in(name)
            url = running.add(model.spec.filename, model.body)
            monkeypatch.setitem(MODEL_REGISTRY, name, dataclasses.replace(model.spec, url=url))
        yield running


def test_list_shows_every_model_with_size_status_and_path(capsys, tmp_path):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / VIT_B_FILE).write_bytes(b"partial")
    assert main(["models", "list"]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"Checkpoint folder: {tmp_path / 'cache'}" in out
    lines = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert set(lines) == set(MODEL_REGISTRY)
    assert "375 MB" in lines["vit_b"] and "wrong size" in lines["vit_b"]
    assert "missing" in lines["vit_h"] and str(tmp_path / "cache" / "sam_vit_h_4b8939.pth") in out
    assert "built in" in lines["tiny"]


def test_download_then_list_then_verify(server, capsys, tmp_path):
    assert main(["models", "download", "vit_b", "vit_t"]) == EXIT_OK
    captured = capsys.readouterr()
    assert f"vit_b: OK {tmp_path / 'cache' / VIT_B_FILE}" in captured.out
    assert "downloading mobile_sam.pt" in captured.err and "100%" in captured.err

    main(["models", "list"])
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[2:]}
    assert "verified" in lines["vit_b"] and "verified" in lines["vit_t"]

    server.stop()  # verify never needs the network
    assert main(["models", "verify"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "vit_b: OK" in out and "vit_t: OK" in out


def test_verify_reports_a_damaged_file_without_deleting_it(server, capsys, tmp_path):
    main(["models", "download", "vit_t"])
    path = tmp_path / "cache" / VIT_T_FILE
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    capsys.readouterr()

    assert main(["models", "verify", "vit_t"]) == EXIT_SOME_FAILED
    err = capsys.readouterr().err
    assert "vit_t: FAILED" in err and "SHA-256" in err
    assert "napari-persam models download vit_t" in err
    assert path.exists()  # reporting only; download replaces it


def test_verify_with_an_empty_cache(capsys):
    assert main(["models", "verify"]) == EXIT_OK
    assert "No checkpoints in" in capsys.readouterr().out


def test_verify_named_missing_file_fails(capsys):
    assert main(["models", "verify", "vit_b"]) == EXIT_SOME_FAILED
    assert "vit_b: MISSING" in capsys.readouterr().err


def test_download_offline_names_url_file_and_folder(server, capsys, tmp_path):
    url = MODEL_REGISTRY["vit_b"].url
    server.stop()
    assert main(["models", "download", "vit_b"]) == EXIT_SOME_FAILED
    err = capsys.readouterr().err
    assert "vit_b: FAILED" in err and url in err and VIT_B_FILE in err
    assert str(tmp_path / "cache") in err


def test_download_with_url_and_cache_dir_options(server, capsys, tmp_path):
    url = server.url(VIT_B_FILE)
    target = tmp_path / "elsewhere"
    assert main(["models", "--cache-dir", str(target), "download", "vit_b", "--url", url]) == 0
    assert (target / VIT_B_FILE).is_file()


@pytest.mark.parametrize(
    "argv",
    [
        ["models"],
        ["models", "download", "tiny"],
        ["models", "download", "vit_x"],
        ["models", "verify", "nope"],
        ["models", "download", "vit_b", "vit_t", "--url", "http://127.0.0.1:9/x"],
    ],
)
def test_bad_arguments_exit_2(argv, capsys):
    assert main(argv) == EXIT_BAD_ARGUMENTS


def test_download_without_a_name_is_an_argparse_error():
    with pytest.raises(SystemExit) as info:
        main(["models", "download"])
    assert info.value.code == EXIT_BAD_ARGUMENTS
