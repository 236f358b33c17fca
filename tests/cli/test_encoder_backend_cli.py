"""--encoder-backend reaches the engine's options."""

import pytest

from napari_persam.cli import build_parser


@pytest.mark.parametrize("command", ["learn", "segment"])
def test_every_model_command_takes_an_encoder_backend(command):
    from napari_persam._cli.common import build_config

    parser = build_parser()
    required = {
        "learn": ["--reference", "a.png", "--mask", "b.png", "--out", "c.json"],
        "segment": ["--concept", "c.json", "--targets", "x.png", "--out", "o"],
    }[command]
    args = parser.parse_args([command, *required, "--encoder-backend", "onnxruntime"])
    assert build_config(args).encoder_backend == "onnxruntime"
    args = parser.parse_args([command, *required])
    assert build_config(args).encoder_backend == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args([command, *required, "--encoder-backend", "tensorrt"])
