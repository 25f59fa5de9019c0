"""The learned harmonization family (constrained adversarial bilateral grid), as a user runs it.

Phantom heads acquired at two simulated sites with a known answer: the same anatomy under
site B's response is the truth. The family runs with a tiny preset (seconds on a CPU); what
is tested is what a user sees: it beats histogram matching on a spatially varying shift and
on a change of weighting, a lesion keeps its contrast, no edge appears where the input has
none, a saved site model is reused or refused, bad references get clear errors, cancel
works and the inputs are untouched.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from scipy import ndimage

from napari_medgen import Inputs
from napari_medgen.errors import Cancelled, InputError, WeightsError
from napari_medgen.families import harmonize_gan
from napari_medgen.families.harmonize_gan import ConstrainedHarmonization, HarmonizePreset
from napari_medgen.io.phantom import make_phantom
from napari_medgen.runner import run_family
from napari_medgen.volume import Volume

TINY = HarmonizePreset(cell_mm=16.0, knots=12, members=2, patch=24, batch=6, disc_channels=8, disc_layers=2,
                       lr=1e-2, lr_disc=2e-4, train_seconds=600.0, max_steps=120)
SHAPE = (32, 48, 48)
#: mean intensity per phantom label (background, skull, CSF, grey, white)
T1_A = np.array([0.0, 0.15, 0.22, 0.55, 0.80])
T1_B = np.array([0.0, 0.30, 0.10, 0.45, 0.95])  # another scanner: other response
T2_B = np.array([0.0, 0.10, 0.95, 0.55, 0.30])  # another weighting: tissue order reversed


@pytest.fixture(autouse=True)
def tiny_preset(monkeypatch):
    monkeypatch.setitem(harmonize_gan.PRESETS, "fast", TINY)


def _bias(shape, strength, direction):
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    return 1.0 + strength * sum(d * g for d, g in zip(direction, grids))


def _site(labels, means, seed, bias=None, noise=0.01, lesion=None, lesion_value=None, scale=1.0):
    """A phantom's labels acquired at a site: tissue means, smooth texture, bias, noise, intensity scale."""
    rng = np.random.default_rng(seed)
    img = means[labels].astype(np.float64)
    if lesion is not None:
        img[lesion] = lesion_value
    img = ndimage.gaussian_filter(img, 0.7)
    tex = ndimage.gaussian_filter(rng.standard_normal(labels.shape), 3.0)
    img += 0.02 * tex / tex.std() * (labels > 0)
    if bias is not None:
        img *= bias
    clean = img.copy()
    img += noise * rng.standard_normal(labels.shape) * (labels > 0)
    return (np.clip(img, 0, None) * scale).astype(np.float32), (clean * scale).astype(np.float32)


def _ball(shape, centre, radius):
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


def _refs(means, bias=None, n=3, scale=300.0):
    refs = []
    for seed, shift in zip((21, 22, 23, 24), ((2.0, -3.0, 1.5), (-1.5, 2.0, 3.0), (3.0, 1.0, -2.0), (0, 2, 2))):
        vol, labels = make_phantom(SHAPE, seed=seed)
        data, _ = _site(labels, means, seed + 100, bias=bias, scale=scale)
        affine = vol.affine.copy()
        affine[:3, 3] += shift
        refs.append(Volume(data, affine, name=f"ref{seed}"))
    return refs[:n]


def _psnr(truth, test, mask):
    rng = float(truth[mask].max() - truth[mask].min())
    return 10 * np.log10(rng**2 / float(np.mean((truth[mask] - test[mask]) ** 2)))


def _run(scan, refs=(), mask=None, **params):
    family = ConstrainedHarmonization()
    params.setdefault("max_steps", TINY.max_steps)
    return run_family(family, Inputs(image=scan, references=list(refs), mask=mask), params, seed=0)


def _histmatch(registry, scan, refs):
    return run_family(registry.get("classic.histmatch").family, Inputs(image=scan, references=list(refs)), {},
                      seed=0).primary.volume.data


@pytest.fixture(scope="module")
def subject():
    vol, labels = make_phantom(SHAPE, seed=11, name="scan")
    return vol, labels


@pytest.mark.parametrize("target", ["t1_other_scanner", "t2_weighted"])
def test_beats_histogram_matching_on_a_known_site_shift(target, subject, registry):
    vol, labels = subject
    bias_a = _bias(SHAPE, 0.25, (0.0, 1.0, 0.5))
    bias_b = _bias(SHAPE, 0.15, (1.0, -0.5, 0.0))
    means = T1_B if target == "t1_other_scanner" else T2_B
    scan_data, _ = _site(labels, T1_A, 5, bias=bias_a, scale=1000.0)
    scan = vol.with_data(scan_data, name="scan")
    _, truth = _site(labels, means, 5, bias=bias_b, noise=0.0, scale=300.0)
    refs = _refs(means, bias=bias_b)
    before = scan.data.copy()
    ref_before = [r.data.copy() for r in refs]
    result = _run(scan, refs)
    out = result.primary.volume
    assert out.shape == scan.shape and out.data.dtype == np.float32
    np.testing.assert_allclose(out.affine, scan.affine)
    head = labels >= 2
    ours = _psnr(truth, out.data, head)
    base = _psnr(truth, _histmatch(registry, scan, refs), head)
    assert ours > base + 2.0, (ours, base)
    if target == "t2_weighted":  # the order of the tissues follows the target site: white matter turns darkest
        # (the phantom's thin CSF rim is as dark as its skull in the T1, which no intensity mapping can part)
        assert out.data[labels == 3].mean() > out.data[labels == 4].mean()
        assert out.data[labels == 2].mean() > out.data[labels == 4].mean()
    halluc = result.outputs[1]
    assert halluc.kind == "heatmap" and halluc.volume.shape == scan.shape
    assert np.isfinite(halluc.volume.data).all() and halluc.volume.data.min() >= 0
    np.testing.assert_array_equal(scan.data, before)
    for r, b in zip(refs, ref_before):
        np.testing.assert_array_equal(r.data, b)
    assert result.info["training"]["steps"] == TINY.max_steps
    assert len(result.info["references"]) == 3 and all(len(r["sha256"]) == 64 for r in result.info["references"])


def test_a_lesion_survives_a_change_of_weighting(subject):
    """A T1-dark lesion in white matter comes out T2-bright (sign right, at least half the truth's contrast)."""
    vol, labels = subject
    lesion = _ball(SHAPE, (16, 24, 30), 3.5) & (labels == 4)
    assert lesion.sum() > 60
    scan_data, _ = _site(labels, T1_A, 5, lesion=lesion, lesion_value=0.45, scale=1000.0)
    _, truth = _site(labels, T2_B, 5, noise=0.0, lesion=lesion, lesion_value=0.75, scale=300.0)
    result = _run(vol.with_data(scan_data, name="scan"), _refs(T2_B))
    out = result.primary.volume.data
    shell = ndimage.binary_dilation(lesion, iterations=3) & ~ndimage.binary_dilation(lesion, iterations=1) & (labels == 4)
    core = ndimage.binary_erosion(lesion)

    def contrast(img):
        return float(img[core].mean() - img[shell].mean())

    assert contrast(truth) > 0
    assert contrast(out) >= 0.5 * contrast(truth), (contrast(out), contrast(truth))


def test_no_edge_appears_where_the_input_has_none():
    """A smooth input gives a smooth output: a flat region stays flat, no slope grows beyond the limit."""
    vol, labels = make_phantom(SHAPE, seed=11, name="scan")
    grids = np.meshgrid(*[np.linspace(-1, 1, n) for n in SHAPE], indexing="ij")
    smooth = 500 + 300 * np.exp(-(grids[0] ** 2 + grids[1] ** 2 + grids[2] ** 2) / 0.3) + 80 * grids[2]
    plateau_level = np.percentile(smooth, 80)
    smooth = np.minimum(smooth, plateau_level)  # a flat top: no edge anywhere in it
    scan = vol.with_data(smooth.astype(np.float32), name="smooth")
    result = _run(scan, _refs(T2_B), mask=vol.with_data((labels >= 2).astype(np.uint8), name="mask"))
    out = result.primary.volume.data.astype(np.float64)
    (s_lo, s_hi), (t_lo, t_hi) = result.info["scan_scale"], result.info["target_scale"]
    g_in = np.sqrt(sum(g**2 for g in np.gradient(smooth / (s_hi - s_lo))))
    g_out = np.sqrt(sum(g**2 for g in np.gradient(out / (t_hi - t_lo))))
    # everywhere: the output is at most MAX_SLOPE times as steep as the input (plus the grid's slow drift)
    excess = g_out - harmonize_gan.MAX_SLOPE * g_in
    assert excess.max() < 0.06, excess.max()
    # the flat top has no edge: only the smooth spatial part of the mapping (a site's bias field, cells of
    # centimetres) varies over it, by a few percent of the target's range per voxel at most (an edge: 10% or more)
    top = ndimage.binary_erosion(smooth >= plateau_level, iterations=2)
    assert top.sum() > 500
    assert g_out[top].max() < 0.06, g_out[top].max()


def test_saved_site_model_is_reused_without_training_and_refused_for_another_weighting(subject, tmp_path):
    vol, labels = subject
    bias_b = _bias(SHAPE, 0.15, (1.0, -0.5, 0.0))
    scan_data, _ = _site(labels, T1_A, 5, scale=1000.0)
    scan = vol.with_data(scan_data, name="scan")
    refs = _refs(T2_B, bias=bias_b)
    path = tmp_path / "site.safetensors"
    trained = _run(scan, refs, save_model=str(path))
    assert path.is_file() and path.with_suffix(".json").is_file()
    card = trained.info["saved_model"]
    assert card.endswith(".safetensors")
    # a later scan from site A: another subject, no references, no training
    other_vol, other_labels = make_phantom(SHAPE, seed=12, name="later")
    later = other_vol.with_data(_site(other_labels, T1_A, 6, scale=700.0)[0], name="later")
    _, truth = _site(other_labels, T2_B, 6, bias=bias_b, noise=0.0, scale=300.0)
    reused = _run(later, model_file=str(path))
    assert "training" in reused.info and reused.info["model_file"] == str(path)
    assert _psnr(truth, reused.primary.volume.data, other_labels >= 2) > 15.0
    # a scan of another weighting than the training scan's is refused
    t2_scan = other_vol.with_data(_site(other_labels, T2_B, 6, scale=500.0)[0], name="t2 scan")
    with pytest.raises(InputError, match="another weighting"):
        _run(t2_scan, model_file=str(path))
    # another family's model, or a modified file, is refused
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError):
        _run(later, model_file=str(path))


def _expect_input_error(scan, refs, match):
    with pytest.raises(InputError, match=match):
        _run(scan, refs)


def test_bad_references_get_clear_errors(subject):
    vol, labels = subject
    scan = vol.with_data(_site(labels, T1_A, 5, scale=1000.0)[0], name="scan")
    refs = _refs(T2_B)
    before = scan.data.copy()
    _expect_input_error(scan, [], "at least 1 reference")
    nan = refs[0].with_data(np.where(labels >= 2, np.nan, refs[0].data).astype(np.float32), name="nan ref")
    _expect_input_error(scan, [nan], "NaN")
    const = refs[0].with_data(np.full(refs[0].shape, 7.0, np.float32), name="flat ref")
    _expect_input_error(scan, [const], "constant")
    _expect_input_error(scan, [scan], "the scan itself")
    shifted = Volume(scan.data * 2.0 + 5.0, scan.affine.copy(), name="copy")
    _expect_input_error(scan, [shifted], "the scan itself")
    t1_refs = _refs(T1_B, n=1)
    _expect_input_error(scan, refs[:2] + t1_refs, "mix contrasts")
    # a whole head against a brain-only scan: the reference shows a larger field of view
    brain_only = vol.with_data(np.where(labels >= 3, scan.data, 0).astype(np.float32), name="brain")
    _expect_input_error(brain_only, refs, "field of view")
    np.testing.assert_array_equal(scan.data, before)


def test_cancel_stops_the_run(subject):
    vol, labels = subject
    scan = vol.with_data(_site(labels, T1_A, 5, scale=1000.0)[0], name="scan")
    cancel = threading.Event()
    seen = []

    def progress(done, total, message):
        seen.append(message)
        if "training" in message:
            cancel.set()

    with pytest.raises(Cancelled):
        run_family(ConstrainedHarmonization(), Inputs(image=scan, references=_refs(T2_B)), {"max_steps": 5000},
                   seed=0, progress=progress, cancel_event=cancel)
    assert any("training" in m for m in seen)


def test_cli_with_several_references_after_one_flag(subject, tmp_path):
    from napari_medgen.cli import main
    from napari_medgen.io.nifti import write_nifti as save_nifti

    vol, labels = subject
    scan = vol.with_data(_site(labels, T1_A, 5, scale=1000.0)[0], name="scan")
    save_nifti(scan, tmp_path / "scan.nii.gz")
    paths = []
    for r in _refs(T2_B):
        p = tmp_path / f"{r.name}.nii.gz"
        save_nifti(r, p)
        paths.append(str(p))
    out = tmp_path / "harmonized.nii.gz"
    code = main(["run", "harmonize", str(tmp_path / "scan.nii.gz"), "-o", str(out), "--family",
                 "medgen.harmonize_gan", "--param", "max_steps=40", "--reference", *paths])
    assert code == 0
    assert out.is_file()
    written = sorted(p.name for p in tmp_path.iterdir())
    assert "harmonized_hallucination.nii.gz" in written, written


def test_unconstrained_comparison_generator_shows_its_freedom_in_the_hallucination_map(subject):
    """The free per-voxel generator exists for comparison only: not the default, and its map says so."""
    assert ConstrainedHarmonization().defaults()["generator"] == "constrained"
    vol, labels = subject
    scan = vol.with_data(_site(labels, T1_A, 5, scale=1000.0)[0], name="scan")
    refs = _refs(T2_B)
    head = labels >= 2
    maps = {}
    for gen in ("constrained", "unconstrained"):
        result = _run(scan, refs, generator=gen, max_steps=100)
        maps[gen] = result.outputs[1].volume.data
        assert result.info["generator"] == gen
    assert "unconstrained" in result.primary.volume.name
    assert np.percentile(maps["unconstrained"][head], 99) > 2 * np.percentile(maps["constrained"][head], 99)
