"""Sliding-window inference: exact stitching, progress per window batch, cancel, OOM retry."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_medgen.engine import count_windows, sliding_window
from napari_medgen.errors import Cancelled, DeviceError
from napari_medgen.family import RunContext


def make_ctx(events=None, **kw):
    def progress(done, total, message):
        if events is not None:
            events.append((done, total, message))

    return RunContext(device="cpu", seed=0, progress=progress, **kw)


def test_identity_returns_the_input_exactly_and_leaves_it_untouched():
    # each voxel is covered by 1, 2, 4 or 8 windows here, so float32 averaging is exact
    vol = np.random.default_rng(0).normal(size=(16, 12, 8)).astype(np.float32)
    before = vol.copy()
    out = sliding_window(vol, lambda x: x, (8, 8, 8), ctx=make_ctx(), overlap=0.5, mode="constant", sw_batch_size=3)
    assert out.dtype == np.float32 and out.shape == vol.shape
    np.testing.assert_array_equal(out, vol)
    np.testing.assert_array_equal(vol, before)


def test_identity_on_an_awkward_grid_is_exact_to_float32_rounding():
    # 3 overlapping windows average as (a + a + a) / 3 in float32: at most one ulp off
    vol = np.random.default_rng(0).normal(size=(13, 17, 11)).astype(np.float32)
    out = sliding_window(vol, lambda x: x, (8, 8, 8), ctx=make_ctx(), overlap=0.25, mode="constant")
    assert out.shape == vol.shape
    np.testing.assert_allclose(out, vol, rtol=3e-7, atol=0)


def test_an_in_place_predictor_cannot_modify_the_input():
    vol = np.ones((10, 10, 10), np.float32)
    out = sliding_window(vol, lambda x: x.mul_(2), 6, ctx=make_ctx(), mode="constant")
    np.testing.assert_array_equal(vol, 1.0)
    np.testing.assert_allclose(out, 2.0)


def test_2d_batched_input():
    img = torch.arange(2 * 1 * 20 * 15, dtype=torch.float32).reshape(2, 1, 20, 15)
    out = sliding_window(img, lambda x: x + 1, (8, 8), ctx=make_ctx(), mode="constant", spatial_dims=2)
    assert isinstance(out, np.ndarray) and out.shape == (2, 1, 20, 15)
    np.testing.assert_array_equal(out, img.numpy() + 1)


def test_conv_net_matches_a_full_volume_pass():
    torch.manual_seed(0)
    # pointwise (1x1x1) convolutions: window borders cannot change the answer, only stitching could
    net = torch.nn.Sequential(
        torch.nn.Conv3d(1, 8, 1), torch.nn.GELU(), torch.nn.Conv3d(8, 2, 1)
    )
    vol = torch.randn(1, 1, 12, 14, 10)
    with torch.no_grad():
        full = net(vol).numpy()
    out = sliding_window(vol, net, (8, 8, 8), ctx=make_ctx(), overlap=0.5, mode="gaussian", sw_batch_size=2)
    assert out.shape == (1, 2, 12, 14, 10)
    np.testing.assert_allclose(out, full, atol=1e-4)
    # a bare volume gives channel-first output when the net returns several channels
    bare = sliding_window(vol[0, 0].numpy(), net, (8, 8, 8), ctx=make_ctx(), overlap=0.5)
    np.testing.assert_allclose(bare, full[0], atol=1e-4)


def test_progress_counts_windows():
    events = []
    vol = np.zeros((16, 16, 16), np.float32)
    total = count_windows(vol.shape, (8, 8, 8), 0.5)
    assert total == 27
    sliding_window(vol, lambda x: x, (8, 8, 8), ctx=make_ctx(events), overlap=0.5, sw_batch_size=4, message="denoising")
    assert len(events) == math.ceil(total / 4)
    assert [e[1] for e in events] == [total] * len(events)
    assert events[-1][0] == total and events[-1][2] == "denoising"
    assert [e[0] for e in events] == sorted(e[0] for e in events)


def test_cancel_stops_between_window_batches():
    calls = []
    ctx = make_ctx()
    ctx._progress = lambda done, total, msg: ctx.cancel()

    def predictor(x):
        calls.append(x.shape[0])
        return x

    with pytest.raises(Cancelled):
        sliding_window(np.zeros((16, 16, 16), np.float32), predictor, 8, ctx=ctx, overlap=0.5, sw_batch_size=2)
    assert len(calls) == 1


def test_out_of_memory_halves_the_batch_then_the_window():
    seen = []

    def predictor(x):
        seen.append((x.shape[0], x.shape[-1]))
        if x.shape[0] > 1 or x.shape[-1] > 16:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return x * 2

    vol = np.random.default_rng(1).random((40, 40, 40), dtype=np.float32)
    out = sliding_window(vol, predictor, 32, ctx=make_ctx(), mode="constant", sw_batch_size=4)
    np.testing.assert_allclose(out, vol * 2, rtol=1e-6)
    # batch 4, 2, 1 at the full window, then batch 1 with the window halved, which fits
    assert seen[:3] == [(4, 32), (2, 32), (1, 32)]
    assert set(seen[3:]) == {(1, 16)}
    assert len(seen[3:]) == count_windows(vol.shape, (16, 16, 16), 0.25)


def test_out_of_memory_everywhere_is_a_clear_error():
    def predictor(x):
        raise torch.OutOfMemoryError("CUDA out of memory")

    with pytest.raises(DeviceError, match="super-resolution: out of memory.*CPU"):
        sliding_window(np.zeros((8, 8, 8), np.float32), predictor, 8, ctx=make_ctx(), message="super-resolution")


def test_module_is_run_in_eval_mode_and_its_mode_restored():
    net = torch.nn.Sequential(torch.nn.Dropout(0.5))
    net.train()
    vol = np.ones((8, 8, 8), np.float32)
    out = sliding_window(vol, net, 8, ctx=make_ctx(), mode="constant")
    np.testing.assert_array_equal(out, vol)  # no dropout at inference
    assert net.training


def test_bad_layout_is_refused():
    from napari_medgen.errors import InputError

    with pytest.raises(InputError, match="3D volume"):
        sliding_window(np.zeros((1, 1, 1, 4, 4, 4)), lambda x: x, 4, ctx=make_ctx())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_windows_run_on_the_gpu_and_the_result_comes_back_on_the_cpu():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 8, 1), torch.nn.GELU(), torch.nn.Conv3d(8, 1, 1))
    vol = np.random.default_rng(0).random((24, 24, 24), dtype=np.float32)
    with torch.no_grad():
        cpu = net(torch.from_numpy(vol)[None, None])[0, 0].numpy()
    ctx = RunContext(device="cuda", seed=0)
    out = sliding_window(vol, net.to("cuda"), 16, ctx=ctx, overlap=0.25)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_allclose(out, cpu, atol=2e-2)  # bf16/fp16 autocast
