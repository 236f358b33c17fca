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


def test_keeping_freed_memory_on_glibc_and_nowhere_else(monkeypatch):
    import sys

    from napari_persam.core import devices

    if devices._glibc() is not None:
        try:
            assert devices.keep_freed_memory() is True
        finally:
            devices.release_freed_memory()
    monkeypatch.setattr(sys, "platform", "darwin")
    assert devices.keep_freed_memory() is False
    assert devices.release_freed_memory() is False


_PAGE_FAULTS = """
import resource, torch
from napari_persam.core import devices

def faults_of_large_temporaries():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        # 64 MiB, above glibc's mmap threshold (torch, as the encoder: numpy asks
        # the kernel for huge pages, which hides the storm)
        block = torch.ones(64 * 1024 * 1024 // 8, dtype=torch.float64)
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

plain = faults_of_large_temporaries()
devices.keep_freed_memory()
faults_of_large_temporaries()  # the heap grows once
# The least of three: on a loaded machine the kernel may take a page back now and then.
print(plain, min(faults_of_large_temporaries() for _ in range(3)))
"""


def test_kept_memory_means_no_page_fault_storm():
    import subprocess
    import sys

    from napari_persam.core import devices

    if devices._glibc() is None:
        pytest.skip("glibc only")
    # A fresh process, as the command line is: the settings are process-wide, and
    # what other tests allocated before would blur the counts.
    done = subprocess.run(
        [sys.executable, "-c", _PAGE_FAULTS], capture_output=True, text=True, check=True
    )
    plain, kept = map(int, done.stdout.split())
    assert plain > 5 * 16000  # every 64 MiB block faulted in anew (4 KiB pages)
    assert kept < plain / 10
