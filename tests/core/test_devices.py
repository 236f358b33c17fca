import pytest
import torch

from napari_persam.core.devices import available_devices, resolve_device, supports_bfloat16


def test_auto_picks_an_available_device():
    device = resolve_device(None)
    assert device == resolve_device("auto")
    names = available_devices()
    assert names[-1] == "cpu"
    if torch.cuda.is_available():
        assert device.type == "cuda"
    elif "mps" not in names:
        assert device.type == "cpu"


def test_named_devices():
    assert resolve_device("cpu") == torch.device("cpu")
    from napari_persam.core.devices import cpu_has_native_bfloat16

    assert supports_bfloat16(torch.device("cpu")) == cpu_has_native_bfloat16()
    with pytest.raises(ValueError, match="Unknown device"):
        resolve_device("not-a-device")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
