"""The self-supervised super-resolution family: known answers, geometry, reuse, cancel."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_medgen import Cancelled, InputError, Inputs, Volume, WeightsError
from napari_medgen.families.superres import (
    bspline_resample_axis0,
    degrade_axis0,
    find_slice_axis,
)
from napari_medgen.io.phantom import make_phantom
from napari_medgen.io.sample import simulate_thick_slices
from napari_medgen.runner import run_family

def psnr(a, b, mask):
    rng = float(a.max() - a.min())
    return 10 * np.log10(rng**2 / np.mean((a[mask] - b[mask]) ** 2))


@pytest.fixture(scope="module")
def truth():
    vol, labels = make_phantom((48, 56, 56), spacing=(1.0, 1.0, 1.0), noise=0.0, seed=3)
    return vol, labels > 0


@pytest.fixture
def family(registry):
    return registry.get("medgen.selfsr").family


def test_bspline_interpolates_the_samples_and_degrade_keeps_shape():
    rng = np.random.default_rng(0)
    arr = rng.random((9, 5)).astype(np.float32)
    np.testing.assert_allclose(bspline_resample_axis0(arr, np.arange(9.0)), arr, atol=1e-5)
    img = np.ones((40, 12), np.float32) * 3
    np.testing.assert_allclose(degrade_axis0(img, 3.3, 1.2, 0.7), img, atol=1e-5)


def test_slice_axis_detection():
    assert find_slice_axis((1.0, 1.0, 4.0), "auto") == 2
    assert find_slice_axis((5.0, 0.9, 0.9), "auto") == 0
    # the slice orientation in anatomical words (the names of the slices across each array axis)
    assert find_slice_axis((1.0, 1.0, 4.0), "sagittal") == 2
    assert find_slice_axis((1.0, 4.0, 1.0), "coronal", ["axial", "coronal", "sagittal"]) == 1
    with pytest.raises(InputError, match="isotropic"):
        find_slice_axis((1.0, 1.0, 1.0), "auto")
    # forcing slices that are not the thick ones says which are, not "isotropic"
    with pytest.raises(InputError, match="axial slices .* are not the thick ones.*thick slices are sagittal"):
        find_slice_axis((1.0, 1.0, 4.0), "axial")


@pytest.mark.slow
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_blind_run_beats_cubic_on_a_real_anatomy_crop_along_each_axis(registry, family, axis):
    """A crop of the MNI152 T1 (1 mm truth, anatomy up to every border) with 4 mm slices along
    each axis, the slice thickness not given: SR must beat cubic, also at the ends of the slice axis."""
    from napari_medgen.io.sample import load_mni152

    t1 = load_mni152("t1")
    c = np.array(t1.shape) // 2
    half = [48, 48, 48]
    half[axis] = 32  # 64 mm across the slices, 96 mm in-plane
    box = tuple(slice(int(m) - h, int(m) + h) for m, h in zip(c, half))
    vol = Volume.from_spacing(np.ascontiguousarray(t1.data[box]), (1.0, 1.0, 1.0), name="crop")
    mask = vol.data > 0.2
    thick = simulate_thick_slices(vol, 4.0, axis=axis)
    cubic = run_family(registry.get("classic.cubic").family, Inputs(image=thick), {"target_spacing": "1.0"})
    # the step limit governs (a generous budget): the test does not depend on the machine's speed
    sr = run_family(family, Inputs(image=thick), {"max_steps": 400}, time_budget=3600, seed=0)
    out, ref = sr.primary.volume.data, cubic.primary.volume.data
    assert out.shape == vol.shape == ref.shape
    assert "fallback" not in sr.info
    gain = psnr(vol.data, out, mask) - psnr(vol.data, ref, mask)
    assert gain > 0.3, f"SR gains only {gain:.2f} dB over cubic (axis {axis})"
    ends = np.zeros_like(mask)
    end_slices = [slice(None)] * 3
    end_slices[axis] = np.r_[0:4, vol.shape[axis] - 4 : vol.shape[axis]]
    ends[tuple(end_slices)] = True
    ends &= mask
    assert psnr(vol.data, out, ends) > psnr(vol.data, ref, ends) - 0.5, "SR breaks down at the ends of the slices"
    info = sr.info
    assert info["slice_axis"] == axis and info["scale_factor"] == pytest.approx(4.0)
    assert info["slice_profile"]["source"] == "estimated" and abs(info["slice_profile"]["fwhm_mm"] - 4.0) < 1.0
    assert info["training"]["steps"] == 400


@pytest.mark.parametrize("axis, slice_mm, gap", [(0, 2.5, 0.0), (2, 3.0, 1.0)])
def test_geometry_overlays_the_input(family, truth, axis, slice_mm, gap):
    vol, _ = truth
    thick = simulate_thick_slices(vol, slice_mm, axis=axis, gap_mm=gap)
    before = thick.data.copy()
    res = run_family(family, Inputs(image=thick), {"max_steps": 5, "slice_thickness": slice_mm})
    out = res.primary.volume
    np.testing.assert_allclose(out.spacing, (1.0, 1.0, 1.0), atol=1e-6)
    # world bounding boxes agree to half an output voxel
    np.testing.assert_allclose(out.world_bounds(), thick.world_bounds(), atol=0.5 + 1e-6)
    np.testing.assert_array_equal(thick.data, before)
    assert res.info["gap_mm"] == pytest.approx(gap)
    lo, hi = thick.data.min(), thick.data.max()
    assert out.data.min() >= lo - 1e-6 and out.data.max() <= hi + 1e-6


def test_explicit_target_spacing_and_isotropic_input(family, truth):
    vol, _ = truth
    thick = simulate_thick_slices(vol, 4.0, axis=0)
    res = run_family(family, Inputs(image=thick), {"max_steps": 5, "target_spacing": "2,2,2"})
    np.testing.assert_allclose(res.primary.volume.spacing, (2.0, 2.0, 2.0))
    assert res.primary.volume.shape == (24, 28, 28)
    with pytest.raises(InputError, match="isotropic: no axis is coarser"):
        run_family(family, Inputs(image=vol), {"max_steps": 5})


def test_trained_model_is_saved_and_reused_on_another_scan(family, truth, tmp_path):
    vol, _ = truth
    thick = simulate_thick_slices(vol, 4.0, axis=0)
    path = tmp_path / "sr_model"
    first = run_family(family, Inputs(image=thick), {"max_steps": 40, "save_model": str(path)}, seed=1)
    assert (tmp_path / "sr_model.safetensors").exists()
    card = json.loads((tmp_path / "sr_model.json").read_text())
    assert card["family"] == "medgen.selfsr" and card["scale_factor"] == pytest.approx(4.0)
    other, _ = make_phantom((48, 56, 56), spacing=(1.0, 1.0, 1.0), noise=0.01, seed=9)
    other_thick = simulate_thick_slices(other, 4.0, axis=0)
    reused = run_family(family, Inputs(image=other_thick), {"model_file": str(tmp_path / "sr_model.safetensors")})
    assert reused.info["training"]["steps"] == 40  # from the card: no new training
    assert reused.primary.volume.shape == first.primary.volume.shape
    # the same scan with the saved model reproduces the first result
    again = run_family(family, Inputs(image=thick), {"model_file": str(tmp_path / "sr_model.safetensors")})
    np.testing.assert_allclose(again.primary.volume.data, first.primary.volume.data, atol=1e-4)
    # a different protocol is refused; a tampered file is refused
    six = simulate_thick_slices(other, 6.0, axis=0)
    with pytest.raises(InputError, match="slice factor"):
        run_family(family, Inputs(image=six), {"model_file": str(tmp_path / "sr_model.safetensors")})
    blob = bytearray((tmp_path / "sr_model.safetensors").read_bytes())
    blob[-3] ^= 0xFF
    (tmp_path / "sr_model.safetensors").write_bytes(bytes(blob))
    with pytest.raises(WeightsError):
        run_family(family, Inputs(image=thick), {"model_file": str(tmp_path / "sr_model.safetensors")})


@pytest.mark.parametrize("phase", ["training", "super-resolution"])
def test_cancel_during_training_and_inference(family, truth, phase, monkeypatch):
    import threading

    from napari_medgen.families.superres import SelfSupervisedSR

    # the network path runs whatever the held-out check says (that check has its own test)
    monkeypatch.setattr(SelfSupervisedSR, "_validate", staticmethod(lambda *a: (0.0, 1.0)))
    vol, _ = truth
    thick = simulate_thick_slices(vol, 4.0, axis=0)
    cancel = threading.Event()
    seen = []

    def progress(done, total, message):
        seen.append(message)
        if message.startswith(phase):
            cancel.set()

    with pytest.raises(Cancelled):
        run_family(family, Inputs(image=thick), {"max_steps": 60}, progress=progress, cancel_event=cancel)
    assert any(m.startswith(phase) for m in seen)


def test_training_loss_is_reported_as_metrics(family, truth):
    vol, _ = truth
    thick = simulate_thick_slices(vol, 4.0, axis=0)
    events = []
    run_family(family, Inputs(image=thick), {"max_steps": 50}, metric=events.append, time_budget=3600)
    assert [e["step"] for e in events] == [25, 50]
    assert all(e["loss"] > 0 for e in events)


def test_cli_runs_the_family(tmp_path, truth, capsys):
    from napari_medgen.cli import main
    from napari_medgen.io.nifti import read_nifti, write_nifti

    vol, _ = truth
    src = tmp_path / "thick.nii.gz"
    write_nifti(simulate_thick_slices(vol, 3.0, axis=0), src)
    out = tmp_path / "sr.nii.gz"
    code = main(["run", "superres", str(src), "-o", str(out), "--family", "medgen.selfsr",
                 "--param", "max_steps=10", "--time-budget", "30", "--quiet"])
    assert code == 0, capsys.readouterr().err
    result = read_nifti(out)
    np.testing.assert_allclose(result.spacing, (1.0, 1.0, 1.0), atol=1e-5)
    assert result.shape[0] == 48


def test_an_untrained_network_never_makes_it_worse_than_bspline(family, truth, tmp_path):
    """Too little training: the held-out check falls back to B-spline interpolation and says so for good."""
    import nibabel as nib

    from napari_medgen.families.superres import bspline_resample_axis0
    from napari_medgen.io.nifti import write_nifti

    vol, _ = truth
    thick = simulate_thick_slices(vol, 4.0, axis=0)
    res = run_family(family, Inputs(image=thick), {"max_steps": 1}, time_budget=3600)
    assert "fell back to B-spline interpolation" in res.info["warning"] and "after 1 training steps" in res.info["warning"]
    assert res.info["validation"]["l1_network"] >= res.info["validation"]["l1_bspline"]
    out = res.primary.volume
    # the result says what it is: in its name, its provenance and the header of a saved file
    assert "B-spline" in out.name and "SR fallback" in out.name
    assert "B-spline" in out.metadata["medgen"]["fallback"]
    saved = write_nifti(out, tmp_path / "sr.nii.gz")
    descrip = nib.load(saved).header["descrip"][()].decode()
    assert "medgen.selfsr" in descrip and "FALLBACK: B-spline" in descrip
    mapping = np.linalg.inv(thick.affine) @ out.affine
    t = mapping[0, 0] * np.arange(out.shape[0]) + mapping[0, 3]
    expected = np.clip(bspline_resample_axis0(thick.data, t), thick.data.min(), thick.data.max())
    np.testing.assert_allclose(out.data, expected, atol=1e-5)


def _isotropic_phantom(n: int = 128, seed: int = 0) -> Volume:
    """A ball of tissue-like texture with the same statistics in every direction (detail at 1-8 mm)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    texture = np.zeros((n, n, n), np.float32)
    for scale in (1.0, 2.0, 4.0, 8.0):
        t = ndimage.gaussian_filter(rng.normal(size=(n, n, n)).astype(np.float32), scale)
        texture += t / t.std()
    z, y, x = np.mgrid[:n, :n, :n] - n / 2
    ball = (z**2 + y**2 + x**2) < (0.45 * n) ** 2
    return Volume.from_spacing(np.where(ball, 1.0 + 0.08 * texture, 0.0).astype(np.float32), (1.0, 1.0, 1.0))


@pytest.mark.parametrize("axis", [0, 2])
def test_slice_profile_is_estimated_from_the_scan_within_half_a_millimetre(axis):
    """Known FWHM and gap on a phantom: the estimate is within the stated 0.5 mm, without being told."""
    from napari_medgen.acquisition import estimate_slice_profile

    vol = _isotropic_phantom()
    for fwhm, gap in [(3.0, 0.0), (4.0, 0.0), (6.0, 0.0), (3.0, 1.0)]:
        thick = simulate_thick_slices(vol, fwhm, axis=axis, gap_mm=gap)
        profile = estimate_slice_profile(thick.data, thick.spacing, axis)
        assert profile.source == "estimated" and profile.spacing_mm == pytest.approx(fwhm + gap)
        assert abs(profile.fwhm_mm - fwhm) <= 0.5, (fwhm, gap, profile.record())
        assert profile.gap_mm == pytest.approx(max(0.0, fwhm + gap - profile.fwhm_mm))


def test_blind_profile_is_reported_and_a_given_one_is_used(family, truth):
    vol, _ = truth
    thick = simulate_thick_slices(vol, 3.0, axis=0, gap_mm=1.0)
    blind = run_family(family, Inputs(image=thick), {"max_steps": 2})
    profile = blind.info["slice_profile"]
    # 12 slices of a blob phantom: a rough estimate, flagged as such (the accuracy test is above)
    assert profile["source"] == "estimated" and 1.5 < profile["fwhm_mm"] < 6.0
    assert profile["slices"] == 12 and "uncertain" in profile["note"]
    assert blind.info["slice_thickness_mm"] == pytest.approx(profile["fwhm_mm"], abs=1e-3)
    assert blind.info["provenance"]["params"]["slice_thickness"] == "auto"
    given = run_family(family, Inputs(image=thick), {"max_steps": 2, "slice_thickness": 3.0})
    assert given.info["slice_profile"]["source"] == "given" and given.info["gap_mm"] == pytest.approx(1.0)


def test_a_step_limit_without_a_time_budget_is_reproducible(family, truth):
    """Same seed and step limit, no time budget: the same result, whatever the machine's speed."""
    from napari_medgen.families.superres import SelfSupervisedSR

    vol, _ = truth
    thick = simulate_thick_slices(vol, 4.0, axis=0)
    runs = [run_family(family, Inputs(image=thick), {"max_steps": 12}, seed=5) for _ in range(2)]
    assert [r.info["training"]["steps"] for r in runs] == [12, 12]
    assert runs[0].info["training"]["final_loss"] == runs[1].info["training"]["final_loss"]
    np.testing.assert_array_equal(runs[0].primary.volume.data, runs[1].primary.volume.data)
    assert SelfSupervisedSR().param("max_steps").default == "auto"


def test_slice_orientation_in_anatomical_words(family, truth):
    vol, _ = truth
    thick = simulate_thick_slices(vol, 4.0, axis=2)  # (S, A, R) order: thick along R = sagittal slices
    res = run_family(family, Inputs(image=thick), {"max_steps": 2, "slice_axis": "sagittal"})
    assert res.info["slice_orientation"] == "sagittal" and res.info["slice_axis"] == 2
    with pytest.raises(InputError, match="axial slices .* are not the thick ones.*sagittal"):
        run_family(family, Inputs(image=thick), {"max_steps": 2, "slice_axis": "axial"})


def test_a_scan_no_slice_profile_explains_is_not_given_a_made_up_one():
    """Through-plane detail finer than in-plane (not thick slices as labelled): the spacing is assumed, and says so."""
    from scipy import ndimage

    from napari_medgen.acquisition import estimate_slice_profile

    vol = _isotropic_phantom(96)
    data = ndimage.gaussian_filter(vol.data, (0.0, 4.0, 4.0))[::2]  # blurred in-plane, sharp across "4 mm" slices
    profile = estimate_slice_profile(data, (4.0, 1.0, 1.0), 0)
    assert profile.source.startswith("assumed") and profile.fwhm_mm == 4.0, profile.record()
