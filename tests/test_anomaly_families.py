"""The learned normative anomaly families (VAE and patched DDPM), as a user runs them.

The networks are shrunk (tiny presets) so each run takes seconds on a CPU; what is tested is
what the user sees: a heatmap on the scan's grid that finds a lesion better than the
intensity-outlier baseline, regions, saved models that are reused or refused, clear errors,
cancel, and inputs left untouched.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from napari_medgen import Inputs
from napari_medgen.errors import Cancelled, InputError, WeightsError
from napari_medgen.families import ddpm_anomaly, vae_anomaly
from napari_medgen.io.phantom import make_phantom
from napari_medgen.normative import NormativePreset
from napari_medgen.runner import run_family
from napari_medgen.volume import Volume

TINY = {
    "medgen.vae_anomaly": NormativePreset(channels=(8, 16, 16, 16), tile=32, batch=8, lr=3e-3, train_seconds=60.0,
                                          max_steps=600, orientations=1, calib_slices=6,
                                          extra=(("kl_weight", 1e-4), ("samples", 2), ("latent", 4))),
    "medgen.ddpm_anomaly": NormativePreset(channels=(8, 16, 16), tile=32, batch=8, lr=3e-3, train_seconds=60.0,
                                           max_steps=400, orientations=1, calib_slices=6,
                                           extra=(("levels", (350,)), ("shifts", 1), ("ddim_steps", 1),
                                                  ("res_blocks", 1))),
}
FAMILIES = {"medgen.vae_anomaly": vae_anomaly.NormativeVAE, "medgen.ddpm_anomaly": ddpm_anomaly.NormativeDiffusion}


@pytest.fixture(autouse=True)
def tiny_presets(monkeypatch):
    for fid, cls in FAMILIES.items():
        monkeypatch.setitem(cls.PRESETS, "fast", TINY[fid])


def _ball(shape, centre, radius):
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2


@pytest.fixture(scope="module")
def lesion_case():
    """A phantom with a bright lesion in white matter, and three healthy phantoms of other subjects."""
    scan, labels = make_phantom((32, 48, 48), seed=11, name="scan")
    lesion = _ball(scan.shape, (16, 20, 26), 4.0) & (labels == 4)
    data = scan.data.copy()
    data[lesion] += 0.35
    scan = scan.with_data(data)
    refs = []
    for seed, shift in ((21, (2.0, -3.0, 1.5)), (22, (-1.5, 2.0, 3.0)), (23, (3.0, 1.0, -2.0))):
        ref, _ = make_phantom((32, 48, 48), seed=seed, name=f"ref{seed}")
        affine = ref.affine.copy()
        affine[:3, 3] += shift  # another position in the scanner, another intensity scale
        ref = Volume(np.pad(ref.data * 400.0, ((2, 0), (0, 3), (1, 1))), affine, name=f"ref{seed}")
        ref.affine[:3, 3] -= (2.0, 0.0, 1.0)  # the padding at the start shifts the grid, not the head
        refs.append(ref)
    return scan, lesion, refs


def _average_precision(score, truth):
    order = np.argsort(-score.ravel(), kind="stable")
    t = truth.ravel()[order]
    hits = np.cumsum(t)
    precision = hits / np.arange(1, t.size + 1)
    return float((precision * t).sum() / max(1, t.sum()))


def _run(fid, scan, refs=(), **params):
    family = FAMILIES[fid]()
    return run_family(family, Inputs(image=scan, references=list(refs)), params, seed=0)


@pytest.mark.parametrize("fid", list(FAMILIES))
def test_learned_family_with_references_beats_intensity_outliers(fid, lesion_case, registry):
    scan, lesion, refs = lesion_case
    before = scan.data.copy()
    ref_before = [r.data.copy() for r in refs]
    result = _run(fid, scan, refs)
    heat = result.outputs[0].volume.data
    outlier = run_family(registry.get("classic.outlier").family, Inputs(image=scan), {}, seed=0)
    base = outlier.outputs[0].volume.data
    ap, ap_base = _average_precision(heat, lesion), _average_precision(base, lesion)
    assert ap > ap_base, (ap, ap_base)
    # nothing of the inputs changed
    np.testing.assert_array_equal(scan.data, before)
    for r, b in zip(refs, ref_before):
        np.testing.assert_array_equal(r.data, b)
    assert result.info["mode"] == "references" and result.info["reference_prior"]
    assert result.info["calibration_held_out"] == [refs[-1].name]


def test_per_scan_mode_runs_and_says_what_it_is_worth(lesion_case):
    """Without references the model learns from the scan itself; the result says it is the weak mode."""
    scan, _, _ = lesion_case
    before = scan.data.copy()
    result = _run("medgen.ddpm_anomaly", scan)
    assert result.info["mode"] == "per-scan" and not result.info["reference_prior"]
    assert result.info["training"]["robust_loss"]
    assert "no references" in result.info["warning"] and "healthy scans" in result.info["warning"]
    assert result.outputs[0].volume.shape == scan.shape
    np.testing.assert_array_equal(scan.data, before)


def test_heatmap_geometry_regions_and_reconstruction(lesion_case):
    scan, lesion, refs = lesion_case
    result = _run("medgen.vae_anomaly", scan, refs, threshold=3.0, min_region_mm3=5.0, reconstruction=True)
    outs = {o.name: o for o in result.outputs}
    assert set(outs) == {"heatmap", "regions", "reconstruction"}
    for out in outs.values():
        assert out.volume.shape == scan.shape
        np.testing.assert_allclose(out.volume.affine, scan.affine)
    heat = outs["heatmap"].volume.data
    assert heat.dtype == np.float32 and heat.min() >= 0 and np.isfinite(heat).all()
    assert heat[0, 0, 0] == 0  # outside the head
    labels = outs["regions"].volume.data
    assert np.issubdtype(labels.dtype, np.integer)
    assert result.info["n_regions"] == labels.max() == len(result.info["regions"])
    if result.info["regions"]:
        assert result.info["regions"][0]["peak"] >= 3.0
    recon = outs["reconstruction"].volume.data
    inside = scan.data > 0.3
    assert abs(np.median(recon[inside]) - np.median(scan.data[inside])) < 0.1  # on the scan's intensity scale
    assert result.info["threshold"] == 3.0 and "z-score" in result.info["score_units"]


def test_save_reuse_and_refusals(lesion_case, tmp_path):
    scan, lesion, refs = lesion_case
    model = tmp_path / "site_model.safetensors"
    first = _run("medgen.ddpm_anomaly", scan, refs, save_model=str(model))
    assert model.is_file() and model.with_suffix(".json").is_file()
    import json

    card = json.loads(model.with_suffix(".json").read_text())
    assert card["mode"] == "references" and len(card["references"]) == 3
    assert all(len(r["sha256"]) == 64 for r in card["references"])
    assert card["spacing_mm"] == [1.0, 1.0, 1.0] and "calibration" in card
    # reuse on a later scan of the protocol: no training; on the same scan about the same heatmap (the saved
    # atlas is aligned to the scan again, and stored in half precision)
    again = _run("medgen.ddpm_anomaly", scan, model_file=str(model))
    assert "model_file" in again.info and again.info["mode"] == "references"
    a, b = again.outputs[0].volume.data, first.outputs[0].volume.data
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9
    assert _average_precision(a, lesion) > 0.5 * _average_precision(b, lesion)
    # another contrast (tissue order reversed) is refused
    inverted = scan.with_data(scan.data.max() - scan.data)
    inverted.data[scan.data < 0.05] = 0
    with pytest.raises(InputError, match="another contrast"):
        _run("medgen.ddpm_anomaly", inverted, model_file=str(model))
    # another voxel size is refused
    coarse = Volume.from_spacing(scan.data[::2, ::2, ::2], (2.0, 2.0, 2.0))
    with pytest.raises(InputError, match="voxels"):
        _run("medgen.ddpm_anomaly", coarse, model_file=str(model))
    # a tampered file is refused
    raw = bytearray(model.read_bytes())
    raw[-5] ^= 0xFF
    model.write_bytes(bytes(raw))
    with pytest.raises(WeightsError, match="checksum"):
        _run("medgen.ddpm_anomaly", scan, model_file=str(model))
    # another family's model is refused
    with pytest.raises(WeightsError, match="family"):
        _run("medgen.vae_anomaly", scan, model_file=str(model))


def test_reference_of_another_contrast_is_refused(lesion_case):
    scan, _, refs = lesion_case
    t2like = refs[0].with_data(np.where(refs[0].data > 30, refs[0].data.max() - refs[0].data, 0), name="T2 ref")
    with pytest.raises(InputError, match="same contrast.*T1 and T2|reversed"):
        _run("medgen.vae_anomaly", scan, [refs[1], t2like])


def test_one_reference_runs_with_a_warning(lesion_case):
    scan, _, refs = lesion_case
    result = _run("medgen.vae_anomaly", scan, refs[:1])
    assert "one reference" in result.info["warning"]


def test_volume_without_tissue_is_refused():
    empty = Volume.from_spacing(np.zeros((24, 32, 32), np.float32))
    with pytest.raises(InputError):
        _run("medgen.vae_anomaly", empty)


@pytest.mark.parametrize("stage", ["training", "denoising"])
def test_cancel_during_training_and_inference(stage, lesion_case):
    scan, _, _ = lesion_case
    cancel = threading.Event()

    def progress(done, total, message):
        if message.startswith(stage):
            cancel.set()

    with pytest.raises(Cancelled):
        run_family(ddpm_anomaly.NormativeDiffusion(), Inputs(image=scan), {}, seed=0, progress=progress,
                   cancel_event=cancel)


def test_cli_several_references_after_one_flag(lesion_case, tmp_path, capsys):
    from napari_medgen.cli import main
    from napari_medgen.io.nifti import read_nifti, write_nifti

    scan, _, refs = lesion_case
    paths = []
    for v in [scan, *refs]:
        paths.append(tmp_path / f"{v.name}.nii.gz")
        write_nifti(v, paths[-1])
    out = tmp_path / "heat.nii.gz"
    code = main(["run", "anomaly", str(paths[0]), "-o", str(out), "--family", "medgen.vae_anomaly",
                 "--reference", *map(str, paths[1:]), "-q"])
    _, err = capsys.readouterr()
    assert code == 0, err
    heat = read_nifti(out)
    assert heat.shape == scan.shape
    import json

    side = json.loads((tmp_path / "heat.medgen.json").read_text())
    assert side["mode"] == "references" and len(side["references"]) == 3
    assert (tmp_path / "heat_regions.nii.gz").is_file()


@pytest.mark.parametrize("fid", list(FAMILIES))
def test_dock_runs_each_learned_family_with_reference_layers(fid, make_napari_viewer, qtbot, lesion_case):
    """The Anomaly dock with the real threaded worker: reference layers picked, heatmap and regions added."""
    from napari_medgen.demo import PLUGIN
    from napari_medgen.io.napari_io import volume_to_layer_data

    scan, _, refs = lesion_case
    viewer = make_napari_viewer()
    for vol in [scan, *refs]:
        data, kwargs, _ = volume_to_layer_data(vol, name=vol.name)
        viewer.add_image(data, **kwargs)
    _, w = viewer.window.add_plugin_dock_widget(PLUGIN, "Anomaly map")
    w.image_combo.value = "scan"
    w.select_family(fid)
    w.ref_select.value = [r.name for r in refs]
    w.set_params(threshold=3.0, min_region_mm3=5.0)
    n = len(viewer.layers)
    with qtbot.capture_exceptions() as exceptions:
        w.run()
        assert w._running
        qtbot.waitUntil(lambda: not w._running, timeout=240_000)
        qtbot.wait(100)
    assert not exceptions, exceptions
    assert w.last_error == "", w.last_error
    heat, regions = list(viewer.layers)[n:]
    assert heat.data.shape == scan.shape and regions.data.shape == scan.shape
    np.testing.assert_allclose(heat.scale, scan.spacing)
    assert w.last_result.info["mode"] == "references"
    assert w.regions_part.table.rowCount() == len(w.last_result.info["regions"])
    assert heat.name not in w.ref_select.choices  # a heatmap is not offered as a reference scan


def test_a_reference_with_a_lesion_is_named_in_a_warning():
    from napari_medgen.normative import NormativeFamily

    refs, masks = [], []
    for seed in (31, 32, 33, 34):
        vol, labels = make_phantom((32, 48, 48), seed=seed)
        refs.append(vol.data.astype(np.float32))
        masks.append(labels > 0)
    refs[2] = refs[2].copy()
    refs[2][_ball(refs[2].shape, (16, 20, 26), 4.0)] += 0.6
    warnings: list[str] = []
    NormativeFamily._flag_unusual_references(refs, masks, (1.0, 1.0, 1.0), ["a", "b", "c", "d"], warnings)
    assert len(warnings) == 1 and "reference 'c'" in warnings[0] and "lesion" in warnings[0]
