"""Device choice, its label, autocast and the out-of-memory retry (no GPU needed: torch is faked)."""

from __future__ import annotations

import torch
import pytest

from napari_medgen.engine import device as dev
from napari_medgen.engine import (
    autocast,
    autocast_dtype,
    available_devices,
    describe_device,
    is_oom,
    resolve_device,
    run_with_oom_retry,
)
from napari_medgen.errors import DeviceError


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: f"Fake GPU {i}")


def test_auto_falls_back_to_cpu_with_a_warning_label(no_gpu):
    assert resolve_device("auto") == "cpu"
    assert resolve_device("") == "cpu"
    label = describe_device("auto")
    assert label.startswith("CPU") and "no GPU found" in label
    assert describe_device("cpu") == "CPU"
    assert available_devices() == ["auto", "cpu"]


def test_explicit_cuda_without_gpu_is_a_clear_error(no_gpu):
    with pytest.raises(DeviceError, match=r"CUDA was requested but no CUDA GPU is visible to torch \(torch \d+\.\d+"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="MPS"):
        resolve_device("mps")
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    # the label never raises: it says why
    assert describe_device("cuda:1").startswith("unavailable: CUDA was requested")
    assert describe_device("tpu").startswith("unavailable: unknown device")


def test_auto_prefers_cuda_then_mps(two_gpus, monkeypatch):
    assert resolve_device("auto") == "cuda"
    assert resolve_device("CUDA:1") == "cuda:1"
    assert describe_device("auto") == "CUDA: Fake GPU 0"
    assert describe_device("cuda:1") == "CUDA: Fake GPU 1"
    assert available_devices() == ["auto", "cuda:0", "cuda:1", "cpu"]
    with pytest.raises(DeviceError, match="only 2 CUDA GPU"):
        resolve_device("cuda:2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    assert resolve_device("auto") == "mps"
    assert describe_device("auto") == "MPS"
    assert "mps" in available_devices()


def test_autocast_precision_per_device(monkeypatch):
    assert autocast_dtype("cpu") is None
    assert autocast_dtype("mps") is torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert autocast_dtype("cuda") is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert autocast_dtype("cuda:0") is torch.float16
    # on the CPU autocast is a no-op: results stay float32
    with autocast("cpu"):
        out = torch.nn.Linear(4, 4)(torch.ones(2, 4))
    assert out.dtype is torch.float32
    with autocast("cuda", enabled=False):
        pass


def test_is_oom_recognises_cuda_and_mps_messages():
    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not is_oom(RuntimeError("shape mismatch"))
    assert not is_oom(ValueError("out of memory"))


def test_oom_retry_uses_the_first_size_that_fits():
    calls = []

    def fn(size):
        calls.append(size)
        if size > 2:
            raise torch.OutOfMemoryError(f"CUDA out of memory with {size}")
        return size * 10

    assert run_with_oom_retry(fn, [8, 4, 2, 1], device="cpu", message="inference") == 20
    assert calls == [8, 4, 2]


def test_oom_retry_gives_advice_when_nothing_fits():
    def fn(size):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(DeviceError) as info:
        run_with_oom_retry(fn, [4, 2, 1], device="cuda", message="super-resolution")
    text = str(info.value)
    assert text.startswith("super-resolution: out of memory")
    assert "smaller window" in text and "CPU" in text


def test_oom_retry_does_not_hide_other_errors():
    calls = []

    def fn(size):
        calls.append(size)
        raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        run_with_oom_retry(fn, [4, 2], device="cpu", message="x")
    assert calls == [4]
