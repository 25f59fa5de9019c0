"""classic.linear / classic.cubic: geometry, accuracy, parameters, cancel, inputs untouched."""

from __future__ import annotations

import os
import time

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from napari_medgen import RESEARCH_USE, Inputs, RunContext, Task, Volume
from napari_medgen.errors import Cancelled, InputError, ParamError
from napari_medgen.io.phantom import make_phantom
from napari_medgen.volume import resample_geometry

from medgen_classic import plugin
from medgen_classic.superres import CubicBSpline, LinearInterpolation, parse_target_spacing, resample_separable


def mni_volume(step: int = 2) -> Volume:
    """The MNI152 template shipped in the nilearn wheel, in napari axis order, every ``step`` voxel."""
    import nilearn

    path = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data",
                        "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    img = nib.as_closest_canonical(nib.load(path))
    data = np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0)[::step, ::step, ::step]
    return Volume.from_spacing(np.ascontiguousarray(data), (step,) * 3, origin=img.affine[:3, 3][::-1], name="MNI152")


def run(family, volume, **params):
    return family.run(Inputs(volume), family.resolve_params(params), RunContext(seed=0))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(np.ptp(b) ** 2 / np.mean((a - b) ** 2)))


def test_plugin_registers_the_six_classic_families():
    families = []
    plugin.medgen_register_families(families.append)
    ids = [f.id for f in families]
    assert ids == ["classic.linear", "classic.cubic", "classic.histmatch", "classic.nyul",
                   "classic.outlier", "classic.procedural"]
    for f in families:
        assert f.version == "0.1.0" and f.license == "BSD-3-Clause"
        assert f.intended_use == RESEARCH_USE and f.wants_gpu is False
        assert f.display_name and f.description and f.citation
        f.resolve_params({})  # every default validates
    assert {f.id: f.task for f in families}["classic.cubic"] == Task.SUPERRES
    assert [f.display_name for f in families[:2]] == ["Linear interpolation", "Cubic B-spline"]


@pytest.mark.parametrize("family", [LinearInterpolation(), CubicBSpline()], ids=["linear", "cubic"])
def test_auto_target_is_isotropic_at_finest_spacing_with_same_world_box(family):
    vol, _ = make_phantom((12, 40, 36), spacing=(4.0, 1.0, 1.0), noise=0.0)
    result = run(family, vol)
    out = result.primary.volume
    assert out.shape == (48, 40, 36)
    assert np.allclose(out.spacing, (1.0, 1.0, 1.0))
    assert np.allclose(out.world_bounds(), vol.world_bounds(), atol=0.5)
    assert out.data.dtype == np.float32
    assert out.name == f"phantom ({family.short} 1 mm)"
    assert result.info["output_spacing_mm"] == [1.0, 1.0, 1.0]


def test_explicit_anisotropic_target_and_oblique_direction_kept():
    vol, _ = make_phantom((20, 24, 22), spacing=(2.0, 1.5, 1.5), noise=0.0)
    theta = np.deg2rad(20)
    rot = np.array([[1, 0, 0], [0, np.cos(theta), -np.sin(theta)], [0, np.sin(theta), np.cos(theta)]])
    affine = vol.affine.copy()
    affine[:3, :3] = rot @ affine[:3, :3]
    oblique = Volume(vol.data, affine, name="oblique")
    out = run(CubicBSpline(), oblique, target_spacing="1,0.75,3").primary.volume
    assert np.allclose(out.spacing, (1.0, 0.75, 3.0))
    assert out.shape == (40, 48, 11)
    assert np.allclose(out.direction, oblique.direction, atol=1e-9)
    assert np.allclose(out.world_bounds(), oblique.world_bounds(), atol=0.5 * 3.0)
    assert out.name == "oblique (cubic 1x0.75x3 mm)"


@pytest.mark.parametrize("order", [1, 3])
def test_separable_resampling_equals_map_coordinates(order):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((13, 17, 11)).astype(np.float32)
    vol = Volume.from_spacing(data, (3.0, 1.3, 0.9), origin=(5, -3, 2))
    shape, affine = resample_geometry(vol, (0.7, 2.1, 0.45))
    m = np.linalg.inv(vol.affine) @ affine
    coords = np.meshgrid(*[m[a, a] * np.arange(n) + m[a, 3] for a, n in enumerate(shape)], indexing="ij")
    expected = ndimage.map_coordinates(data.astype(np.float64), coords, order=order, mode="nearest")
    got = resample_separable(vol, shape, affine, order)
    assert np.abs(got - expected).max() < 1e-5


def test_cubic_beats_linear_on_a_smooth_phantom_downsampled_4x():
    truth_vol, _ = make_phantom((64, 48, 48), noise=0.0, seed=2)
    truth = ndimage.gaussian_filter(truth_vol.data, 1.5)
    # thick slices: the mean of 4 consecutive 1 mm slices, same world box as the truth
    low = truth.reshape(16, 4, 48, 48).mean(axis=1)
    low_vol = Volume.from_spacing(low, (4.0, 1.0, 1.0), origin=np.add(truth_vol.origin, (1.5, 0, 0)), name="low")
    lin = run(LinearInterpolation(), low_vol, target_spacing="1").primary.volume
    cub = run(CubicBSpline(), low_vol, target_spacing="1").primary.volume
    assert lin.shape == cub.shape == truth.shape
    assert np.allclose(cub.affine, truth_vol.affine)
    p_lin, p_cub = psnr(lin.data, truth), psnr(cub.data, truth)
    assert p_cub > p_lin + 1.0, (p_lin, p_cub)
    assert p_lin > 25


def test_clip_keeps_cubic_within_input_range():
    data = np.zeros((8, 8, 8), dtype=np.float32)
    data[:, :, 4:] = 1.0  # a step edge makes the spline ring
    vol = Volume.from_spacing(data, (1.0, 1.0, 4.0))
    ringing = run(CubicBSpline(), vol, clip=False).primary.volume.data
    assert ringing.max() > 1.0 + 1e-3 and ringing.min() < -1e-3
    clipped = run(CubicBSpline(), vol).primary.volume.data
    assert clipped.min() >= 0.0 and clipped.max() <= 1.0


def test_target_spacing_parsing():
    assert parse_target_spacing("auto", (3.0, 0.9, 0.9)) == (0.9, 0.9, 0.9)
    assert parse_target_spacing("1.0", (3.0, 1.0, 1.0)) == (1.0, 1.0, 1.0)
    assert parse_target_spacing("1, 0.5,0.5", (3.0, 1.0, 1.0)) == (1.0, 0.5, 0.5)
    for bad in ("fine", "1,2", "0", "-1", "nan", "1,1,1,1"):
        with pytest.raises(ParamError, match="target_spacing"):
            parse_target_spacing(bad, (1.0, 1.0, 1.0))
    vol, _ = make_phantom((8, 8, 8), noise=0.0)
    with pytest.raises(ParamError):
        run(LinearInterpolation(), vol, target_spacing="half")


def test_already_at_target_spacing_is_refused():
    vol, _ = make_phantom((8, 10, 10), noise=0.0)
    with pytest.raises(InputError, match="already at the target spacing"):
        run(CubicBSpline(), vol)
    with pytest.raises(InputError, match="already at the target spacing"):
        run(LinearInterpolation(), vol, target_spacing="1")


@pytest.mark.parametrize("family", [LinearInterpolation(), CubicBSpline()], ids=["linear", "cubic"])
def test_read_only_input_is_not_modified(family):
    vol, _ = make_phantom((10, 20, 20), spacing=(3.0, 1.0, 1.0))
    before = vol.data.copy()
    affine = vol.affine.copy()
    vol.data.setflags(write=False)
    out = run(family, vol).primary.volume
    assert np.array_equal(vol.data, before) and np.array_equal(vol.affine, affine)
    assert out.data.flags.writeable


def test_cancel_before_run_and_within_a_second():
    vol, _ = make_phantom((24, 96, 96), spacing=(4.0, 1.0, 1.0), noise=0.0)
    family = CubicBSpline()
    params = family.resolve_params({"target_spacing": "0.5"})
    ctx = RunContext(seed=0)
    ctx.cancel()
    with pytest.raises(Cancelled):
        family.run(Inputs(vol), params, ctx)

    calls = []

    def progress(done, total, message):
        calls.append(time.perf_counter())
        if len(calls) == 2:
            ctx.cancel()

    ctx = RunContext(seed=0, progress=progress)
    with pytest.raises(Cancelled):
        family.run(Inputs(vol), params, ctx)
    assert time.perf_counter() - calls[1] < 1.0
    assert len(calls) == 2


def test_mni152_downsampled_back_to_1mm():
    low = mni_volume(2)
    out = run(CubicBSpline(), low, target_spacing="1").primary.volume
    assert out.shape == (190, 234, 198)
    assert np.allclose(out.spacing, (1, 1, 1))
    assert np.allclose(out.world_bounds(), low.world_bounds(), atol=0.5)
    full = mni_volume(1).data
    # the 1 mm output grid sits half a voxel off the original grid: compare after the same shift
    shifted = ndimage.shift(full, (0.5, 0.5, 0.5), order=1, mode="nearest")
    corr = np.corrcoef(out.data[:189, :233, :197].ravel(), shifted.ravel())[0, 1]
    assert corr > 0.95
