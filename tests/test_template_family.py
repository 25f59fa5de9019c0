"""template.zscore: the copy-me family works and registers through the hook like any plugin."""

from __future__ import annotations

import os

import nibabel as nib
import numpy as np
import pytest

from napari_medgen import RESEARCH_USE, Inputs, ModelFamily, RunContext, Task, Volume
from napari_medgen.errors import Cancelled, InputError, ParamError
from napari_medgen.io.phantom import make_phantom

import medgen_template
from medgen_template import ZScoreToReference


def mni_volume(step: int = 2) -> Volume:
    """The MNI152 template shipped in the nilearn wheel, in napari axis order, every ``step`` voxel."""
    import nilearn

    path = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data",
                        "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    img = nib.as_closest_canonical(nib.load(path))
    data = np.asarray(img.dataobj, dtype=np.float32).transpose(2, 1, 0)[::step, ::step, ::step]
    return Volume.from_spacing(np.ascontiguousarray(data), (step,) * 3, origin=img.affine[:3, 3][::-1], name="MNI152")


def fg_stats(data: np.ndarray, fg: np.ndarray | None = None) -> tuple[float, float]:
    fg = data > data.mean() if fg is None else fg
    return float(data[fg].mean()), float(data[fg].std())


@pytest.fixture(scope="module")
def pair():
    vol, _ = make_phantom((32, 40, 40), noise=0.02, seed=1)
    image = vol.with_data(vol.data * 250.0 + 30.0, name="site A")
    ref, _ = make_phantom((30, 44, 36), spacing=(1.2, 1.0, 1.0), noise=0.02, seed=2, name="site B")
    return image, ref


def run(image, refs, ctx=None, **params):
    family = ZScoreToReference()
    return family.run(Inputs(image, references=list(refs)), family.resolve_params(params), ctx or RunContext(seed=0))


def test_hook_registers_one_documented_family():
    registered = []
    medgen_template.medgen_register_families(registered.append)
    assert len(registered) == 1
    family = registered[0]
    assert isinstance(family, ModelFamily)
    assert (family.id, family.task) == ("template.zscore", Task.HARMONIZE)
    assert family.display_name == "Z-score to reference"
    assert family.version == "0.1.0" and family.license == "BSD-3-Clause"
    assert family.intended_use == RESEARCH_USE and family.wants_gpu is False
    assert family.input_spec("references").required
    assert family.describe()["params"][0]["name"] == "strength"


def test_foreground_mean_and_std_match_the_reference(pair):
    image, ref = pair
    result = run(image, [ref])
    out = result.primary.volume
    assert out.shape == image.shape and np.array_equal(out.affine, image.affine)
    assert out.data.dtype == np.float32 and out.name == "site A (z-score)"
    fg = image.data > image.data.mean()  # the same voxels, mapped linearly
    mean_out, std_out = fg_stats(out.data, fg)
    mean_ref, std_ref = fg_stats(ref.data)
    assert mean_out == pytest.approx(mean_ref, rel=1e-4)
    assert std_out == pytest.approx(std_ref, rel=1e-4)
    assert result.info["reference_mean_std"] == pytest.approx([mean_ref, std_ref], rel=1e-6)


def test_strength_blends_between_input_and_matched(pair):
    image, ref = pair
    same = run(image, [ref], strength=0.0).primary.volume.data
    assert np.allclose(same, image.data, rtol=1e-6)
    full = run(image, [ref], strength=1.0).primary.volume.data
    half = run(image, [ref], strength=0.5).primary.volume.data
    assert np.allclose(half, 0.5 * (image.data + full), rtol=1e-5, atol=1e-3)
    with pytest.raises(ParamError, match="strength"):
        ZScoreToReference().resolve_params({"strength": 1.5})


def test_read_only_inputs_are_not_modified(pair):
    image, ref = pair
    frozen = image.with_data(image.data.copy())
    frozen_ref = ref.with_data(ref.data.copy())
    frozen.data.setflags(write=False)
    frozen_ref.data.setflags(write=False)
    run(frozen, [frozen_ref])
    assert np.array_equal(frozen.data, image.data) and np.array_equal(frozen_ref.data, ref.data)


def test_cancel_and_missing_reference(pair):
    image, ref = pair
    ctx = RunContext(seed=0)
    ctx.cancel()
    with pytest.raises(Cancelled):
        run(image, [ref], ctx=ctx)
    with pytest.raises(InputError, match="reference"):
        run(image, [])


def test_mni152_rescaled_back_to_the_template():
    mni = mni_volume(2)
    scanner = mni.with_data(mni.data * 2.5 + 40.0, name="scanner")
    out = run(scanner, [mni]).primary.volume.data
    fg = scanner.data > scanner.data.mean()
    assert np.allclose(out[fg], mni.data[fg], atol=1e-2 * float(mni.data.max()))
