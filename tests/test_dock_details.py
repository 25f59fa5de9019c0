"""The docks' details a new user notices: rows that mean nothing for a family, example families,
reference lists, where to pick a missing reference, the loss plot, Cancel, the compare view."""

from __future__ import annotations

import json
import time
import types

import numpy as np
import pytest
from conftest import add_volume, open_dock

from napari_medgen import InputSpec, ModelFamily, Output, Result, Task, hookimpl


@pytest.fixture
def viewer(make_napari_viewer, sync_workers):
    return make_napari_viewer()


def shown(w, key):
    """The row is on screen in the dock: its label and its field (not only enabled or disabled)."""
    label, field = w._rows[key]
    return label.isVisibleTo(w) and field.isVisibleTo(w)


def plugin(*families):
    """A plugin module registering these families."""
    module = types.ModuleType("test_plugin")

    @hookimpl
    def medgen_register_families(register):
        for family in families:
            register(family)

    module.medgen_register_families = medgen_register_families
    return module


# -- 1. device, seed and time budget only where they mean something --------------------------------
def test_the_contract_flags_of_the_project_families(registry):
    fams = {e.id: e.family for e in registry.families()}
    learned = ("medgen.selfsr", "medgen.ddpm_anomaly", "medgen.vae_anomaly", "medgen.harmonize_gan",
               "medgen.lesion_diffusion")
    for fid in learned:
        assert fams[fid].trains and not fams[fid].deterministic, fid
    for fid in ("classic.linear", "classic.cubic", "classic.histmatch", "classic.nyul", "classic.outlier",
                "template.zscore"):
        assert fams[fid].deterministic and not fams[fid].trains, fid
    assert not fams["classic.procedural"].deterministic  # random lesions: the seed matters
    assert [fid for fid, f in fams.items() if f.example] == ["template.zscore"]
    described = fams["classic.cubic"].describe()
    assert (described["trains"], described["deterministic"], described["example"]) == (False, True, False)


def test_families_json_shows_the_flags(capsys):
    from napari_medgen.cli import main

    assert main(["families", "--json"]) == 0
    rows = {r["id"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["medgen.selfsr"]["trains"] is True
    assert rows["classic.nyul"]["deterministic"] is True
    assert rows["template.zscore"]["example"] is True  # the CLI lists examples too


def test_a_classical_family_hides_device_seed_and_time_budget(make_napari_viewer, sync_workers,
                                                              thick_phantom):
    viewer = make_napari_viewer(show=True)
    w = open_dock(viewer, "Super-resolution")
    assert w.entry.id == "medgen.selfsr"  # learned: it trains on the scan
    assert shown(w, "device") and shown(w, "device_note") and shown(w, "seed") and shown(w, "budget")
    assert w.budget_box.native.isEnabled()
    w.select_family("classic.cubic")  # deterministic interpolation: none of the three means anything
    assert not shown(w, "device") and not shown(w, "device_note")
    assert not shown(w, "seed") and not shown(w, "budget")
    assert not w.device_label.isVisibleTo(w)
    # a run of it says honestly where it ran, whatever the hidden combo held
    w.device_combo.value = "cuda"
    w.seed_box.value = 7
    layer = add_volume(viewer, thick_phantom, "thick")
    w.image_combo.value = layer.name
    w.run()
    assert w.last_error == "", w.last_error
    prov = viewer.layers[-1].metadata["medgen"]
    assert prov["device"] == "cpu" and prov["seed"] == 0
    w.select_family("medgen.selfsr")  # back: the rows return with what the user had set
    assert shown(w, "device") and shown(w, "seed") and shown(w, "budget")
    assert w.device_combo.value == "cuda" and w.seed_box.value == 7


def test_random_lesions_keep_the_seed_and_hide_the_rest(make_napari_viewer, sync_workers):
    viewer = make_napari_viewer(show=True)
    w = open_dock(viewer, "Insert lesions")
    w.select_family("classic.procedural")
    assert shown(w, "seed") and not shown(w, "device") and not shown(w, "budget")
    w.select_family("medgen.lesion_diffusion")
    assert shown(w, "seed") and shown(w, "device") and shown(w, "budget")
    h = open_dock(viewer, "Harmonize")
    h.select_family("classic.histmatch")
    assert not shown(h, "seed") and not shown(h, "device") and not shown(h, "budget")


# -- 2. example families only when asked -----------------------------------------------------------
def test_example_families_are_listed_only_when_asked(viewer, monkeypatch):
    from napari_medgen import settings
    from napari_medgen.widgets._signals import registry_events

    monkeypatch.delenv("MEDGEN_SHOW_EXAMPLES", raising=False)
    w = open_dock(viewer, "Harmonize")
    default = w.entry.id
    assert "template.zscore" not in [e.id for e in w._entries]
    # the Model families panel's check box: saves the setting, then reloads the docks
    settings.set_show_examples(True)
    registry_events.reloaded.emit()
    assert "template.zscore" in [e.id for e in w._entries]
    assert w.entry.id == default  # turning examples on does not change the user's family
    labels = [w.family_combo.native.itemText(i) for i in range(w.family_combo.native.count())]
    assert any("template.zscore" in text and "[example]" in text for text in labels)
    assert json.loads(settings.config_path().read_text())["show_examples"] is True
    w.select_family("template.zscore")
    settings.set_show_examples(False)
    registry_events.reloaded.emit()
    assert "template.zscore" not in [e.id for e in w._entries]
    assert w.entry.id == default
    # the environment variable turns them on for one process
    monkeypatch.setenv("MEDGEN_SHOW_EXAMPLES", "1")
    w.refresh_families()
    assert "template.zscore" in [e.id for e in w._entries]


def test_an_example_is_never_the_default(make_napari_viewer, sync_workers, monkeypatch):
    from conftest import project_registry

    from napari_medgen import registry as reg_mod

    class LoudExample(ModelFamily):
        id = "zz.loud"
        task = Task.HARMONIZE
        display_name = "Loud example"
        version = "1"
        priority = 1000  # would sort first
        example = True

        def run(self, inputs, params, ctx):  # pragma: no cover - never run
            raise AssertionError

    monkeypatch.setenv("MEDGEN_SHOW_EXAMPLES", "1")
    reg_mod.set_registry(project_registry(extra=[("loud", plugin(LoudExample()))]))
    w = open_dock(make_napari_viewer(), "Harmonize")
    assert "zz.loud" in [e.id for e in w._entries]
    assert w.entry.id == "medgen.harmonize_gan"
    assert w._entries[-1].id in ("zz.loud", "template.zscore")


def test_settings_share_one_file_with_the_display_convention():
    from napari_medgen import display, settings

    display.set_convention("neurological")
    settings.set_show_examples(True)
    saved = json.loads(settings.config_path().read_text())
    assert saved == {"display_convention": "neurological", "show_examples": True}
    assert display.config_path() == settings.config_path()
    assert display.current_convention() == "neurological" and settings.show_examples()


# -- 3. reference lists: neither the input nor results ---------------------------------------------
def test_references_offer_neither_the_input_nor_results(viewer, phantom):
    image = phantom[0]
    add_volume(viewer, image, "scan")
    add_volume(viewer, image.with_data(image.data * 4.0 + 1.0), "site")
    w = open_dock(viewer, "Harmonize")
    w.image_combo.value = "scan"
    assert list(w.ref_select.choices) == ["site"]
    w.select_family("classic.nyul")
    w.ref_select.value = ["site"]
    w.run()
    assert w.last_error == "", w.last_error
    result = viewer.layers[-1].name
    assert result not in w.ref_select.choices  # a result is not a scan of the target site
    assert list(w.ref_select.value) == ["site"]
    w.image_combo.value = "site"  # the list follows the input
    assert list(w.ref_select.choices) == ["scan"]
    assert list(w.ref_select.value) == []  # the new input is no longer selected as its own reference
    a = open_dock(viewer, "Anomaly map")
    a.image_combo.value = "scan"
    a.select_family("classic.outlier")
    a.run()
    assert a.last_error == "", a.last_error
    assert list(a.ref_select.choices) == ["site"]  # no heatmap, no harmonized result, no input
    assert list(w.ref_select.choices) == ["scan"]


# -- 4. a missing reference says where to pick one -------------------------------------------------
def test_a_missing_reference_says_where_to_pick_one(viewer, phantom):
    add_volume(viewer, phantom[0], "scan")
    w = open_dock(viewer, "Harmonize")
    w.image_combo.value = "scan"
    w.select_family("classic.nyul")
    n = len(viewer.layers)
    w.run()
    assert w.last_error.startswith("Nyul")
    assert "open one (File > Open), then select a target-site scan under Reference(s)" in w.last_error
    add_volume(viewer, phantom[0].with_data(phantom[0].data * 2.0), "site")
    w.run()
    wanted = ("needs 1 reference scan: select a target-site scan under Reference(s) "
              "(Ctrl/Shift-click for several)")
    assert wanted in w.last_error
    assert "--reference" not in w.last_error  # the dock speaks of the dock
    assert len(viewer.layers) == n + 1 and w.run_button.isEnabled() and not w._running


def test_a_missing_normal_reference_names_the_anomaly_list(viewer, phantom):
    from conftest import project_registry

    from napari_medgen import registry as reg_mod

    class NeedsNormals(ModelFamily):
        id = "zz.normals"
        task = Task.ANOMALY
        display_name = "Needs normals"
        version = "1"
        priority = 1000
        inputs = (InputSpec("references", required=True, help="Healthy scans of the same contrast."),)

        def run(self, inputs, params, ctx):
            data = np.zeros(inputs.image.shape, np.float32)
            return Result([Output("heatmap", inputs.image.with_data(data), "heatmap")])

    reg_mod.set_registry(project_registry(extra=[("normals", plugin(NeedsNormals()))]))
    add_volume(viewer, phantom[0], "scan")
    add_volume(viewer, phantom[0], "healthy")
    w = open_dock(viewer, "Anomaly map")
    w.image_combo.value = "scan"
    assert w.entry.id == "zz.normals"
    w.run()
    assert "select a scan of normal anatomy under Normal reference(s)" in w.last_error
    assert "Healthy scans of the same contrast." in w.last_error
    w.ref_select.value = ["healthy"]
    w.run()
    assert w.last_error == "", w.last_error


def test_the_command_line_says_how_to_give_a_reference(capsys, tmp_path, phantom):
    from napari_medgen.cli import main
    from napari_medgen.io.nifti import write_nifti

    write_nifti(phantom[0], tmp_path / "scan.nii.gz")
    code = main(["run", "harmonize", str(tmp_path / "scan.nii.gz"), "-o", str(tmp_path / "h.nii.gz"),
                 "--family", "classic.nyul"])
    err = capsys.readouterr().err
    assert code != 0
    assert "Nyul" in err and "needs 1 reference scan (given: none)" in err
    assert "--reference PATH" in err


# -- 5. the loss plot on short and long runs --------------------------------------------------------
def _pixels(widget):
    from qtpy.QtGui import QImage

    image = widget.grab().toImage().convertToFormat(QImage.Format.Format_RGB32)
    ptr = image.constBits()
    ptr.setsize(image.sizeInBytes())
    arr = np.frombuffer(ptr, np.uint8).reshape(image.height(), image.bytesPerLine() // 4, 4)
    return arr[:, : image.width(), :3][..., ::-1].astype(int)  # BGRA in memory -> RGB


def _orange(rgb):  # the raw curve and its markers (#e8a33d)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (r > 190) & (g > 120) & (g < 190) & (b < 110)


@pytest.mark.parametrize("n", [1, 3, 200])
def test_the_loss_plot_shows_something_useful(qtbot, n):
    from napari_medgen.widgets.loss_plot import LossPlot

    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.resize(420, 130)
    empty = _pixels(plot)
    rng = np.random.default_rng(0)
    steps = [5] if n == 1 else list(range(0, 10 * n, 10))
    for i, step in enumerate(steps):
        loss = 0.0123 if n == 1 else 0.5 * np.exp(-i / 40) * (1 + 0.3 * rng.standard_normal() ** 2)
        plot.add(step, float(loss))
    assert plot.isVisibleTo(plot.parentWidget()) if plot.parentWidget() else plot.isVisible()
    rgb = _pixels(plot)
    assert np.abs(rgb - empty).sum(axis=-1).astype(bool).sum() > 200, "nothing was drawn"
    assert _orange(rgb).sum() > 10, "no curve or marker"
    step, loss = plot.points[-1]
    assert plot.latest_text() == f"loss {loss:.3g} at step {int(step)}"
    if n == 1:
        assert plot.latest_text() == "loss 0.0123 at step 5"
    assert plot.shows_markers() == (n <= 20)
    if n == 200:  # noisy: a bold smoothed trend over the faint raw curve
        smooth = plot.smoothed()
        assert smooth is not None and len(smooth) == n
        assert np.std(np.diff(smooth)) < np.std(np.diff(np.log10([p[1] for p in plot.points])))
        assert _orange(rgb).sum() > 300  # a bold line across the plot
    else:
        assert plot.smoothed() is None
    # the value labels and the axis names are drawn at a readable size
    assert plot._font(0.9).pointSizeF() >= 8.0


# -- 6. Cancel acts within a second ------------------------------------------------------------------
def test_cancel_says_so_at_once_and_ends_within_a_second_and_a_half(make_napari_viewer, qtbot, phantom,
                                                                 with_fake_plugins):
    viewer = make_napari_viewer()
    add_volume(viewer, phantom[0], "scan")
    w = open_dock(viewer, "Anomaly map")
    w.refresh_families()
    w.image_combo.value = "scan"
    w.select_family("fake.slow")  # reports progress every 50 ms
    n = len(viewer.layers)
    with qtbot.capture_exceptions() as exceptions:
        w.run()
        assert w._running
        qtbot.waitUntil(lambda: w.progress_bar.value() > 1, timeout=5000)
        bar = w._run.progress
        w.cancel_button.click()
        clicked = time.perf_counter()
        assert w.status.text() == "Cancelling..."  # at once, before the family has stopped
        assert not w.cancel_button.isEnabled()
        assert "cancelling" in bar.description
        qtbot.waitUntil(lambda: w.status.text() == "Cancelled; nothing was added.", timeout=1500)
        took = time.perf_counter() - clicked
        qtbot.wait(200)  # progress queued before the cancel is delivered now: it changes nothing
    assert not exceptions, exceptions
    assert took < 1.5
    assert w.status.text() == "Cancelled; nothing was added."
    assert len(viewer.layers) == n and w.run_button.isEnabled() and not w.cancel_button.isEnabled()


# -- 7. the Harmonize dock's compare view ------------------------------------------------------------
def test_harmonize_compares_input_and_result_side_by_side(viewer, phantom):
    image = phantom[0]
    scan = add_volume(viewer, image, "scan")
    add_volume(viewer, image.with_data(image.data * 4.0 + 1.0), "site")
    viewer.dims.order = (2, 0, 1)  # the user looks at a sagittal reformat
    w = open_dock(viewer, "Harmonize")
    assert not w.compare_button.isEnabled()  # nothing to compare yet
    w.image_combo.value = "scan"
    w.ref_select.value = ["site"]
    w.select_family("classic.nyul")
    w.run()
    assert w.last_error == "", w.last_error
    result = viewer.layers[-1]
    assert w.compare_button.isEnabled() and w.compare_button.text() == "Compare input and result"
    w.compare_button.click()
    assert viewer.grid.enabled and tuple(viewer.grid.shape) == (1, 2)
    assert viewer.dims.order == (2, 0, 1)  # harmonization keeps the orientation
    assert [layer.name for layer in viewer.layers if layer.visible] == [scan.name, result.name]
    assert w.compare.panel_labels() == {"left": scan.name, "right": result.name}
    assert scan.name_overlay.visible and result.name_overlay.visible
    assert viewer.canvas.overlays.text.visible
    assert viewer.canvas.overlays.text.text.replace(" ", "") == "left:input|right:result"
    assert w.compare_button.text() == "Back to the normal view"
    w.compare_button.click()
    assert not viewer.grid.enabled and viewer.dims.order == (2, 0, 1)
    assert all(layer.visible for layer in viewer.layers)
    assert not scan.name_overlay.visible and not viewer.canvas.overlays.text.visible
    assert w.compare_button.text() == "Compare input and result"


# -- 8. the lesion family's "auto" parameters --------------------------------------------------------
def test_lesion_parameters_say_auto_instead_of_a_magic_number(viewer):
    from napari_medgen.family import AUTO
    from napari_medgen.registry import get_registry

    fam = get_registry().get("medgen.lesion_diffusion").family
    for name in ("diameter_min_mm", "diameter_max_mm", "contrast", "relative_contrast", "nodule_hu",
                 "irregularity"):
        p = fam.param(name)
        assert p.default == AUTO and p.auto, name
        assert "= the" not in p.help and "(0 =" not in p.help and "(-1 =" not in p.help, name
    assert "MS 3-15 mm" in fam.param("diameter_min_mm").auto
    assert "ground-glass nodule -550 HU" in fam.param("nodule_hu").auto
    for p in fam.params:
        if p.kind == "float":
            assert p.unit, f"{p.name} has no unit"
    w = open_dock(viewer, "Insert lesions")
    w.select_family("medgen.lesion_diffusion")
    box = w._param_widgets["diameter_min_mm"]
    assert box.auto_box.value is True and not box.number.visible
    assert w.params()["irregularity"] == AUTO
    box.auto_box.value = False
    assert box.number.value == 1.0  # the smallest allowed, not a "0 = typical"
    assert w._param_widgets["contrast"].number.value == 0.0


def test_auto_lesion_parameters_give_what_the_old_sentinels_gave(registry):
    from napari_medgen import Inputs
    from napari_medgen.family import AUTO
    from napari_medgen.io.phantom import make_phantom
    from napari_medgen.runner import run_family

    fam = registry.get("medgen.lesion_diffusion").family
    legacy = fam.resolve_params({"diameter_min_mm": 0.0, "diameter_max_mm": 0, "irregularity": -1.0})
    assert legacy["diameter_min_mm"] == legacy["diameter_max_mm"] == legacy["irregularity"] == AUTO
    vol, _ = make_phantom((40, 64, 64), noise=0.02, seed=0)
    vol = vol.with_data((vol.data * 1000).astype(np.float32))
    runs = [
        run_family(fam, Inputs(vol), dict(given, n_lesions=2), seed=3)
        for given in (
            {},
            {"diameter_min_mm": 0.0, "diameter_max_mm": 0.0, "irregularity": -1.0},
            {"diameter_min_mm": 3.0, "diameter_max_mm": 15.0, "irregularity": 0.25, "contrast": 2.0},
        )
    ]
    auto, old, explicit = (r.outputs[0].volume.data for r in runs)
    np.testing.assert_array_equal(auto, old)
    np.testing.assert_array_equal(auto, explicit)  # auto is the MS type's typical values
