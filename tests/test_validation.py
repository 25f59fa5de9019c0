"""Bad input gets one clear sentence, before any family runs."""

from __future__ import annotations

import numpy as np
import pytest

from napari_medgen import Inputs, InputError, Volume
from napari_medgen.validation import validate_image, validate_inputs


def vol(data, spacing=(1, 1, 1), **meta):
    return Volume.from_spacing(np.asarray(data), spacing, name="scan", metadata=meta)


@pytest.mark.parametrize(
    "volume, message",
    [
        (vol(np.random.rand(32, 32)), "is 2D"),
        (vol(np.random.rand(2, 8, 16, 16)), "is 4D"),
        (vol((np.random.rand(8, 16, 16, 3) * 255).astype(np.uint8)), "RGB"),
        (vol(np.random.rand(8, 16, 16), rgb=True), "RGB"),
        (vol(np.random.randint(0, 3, (8, 16, 16)), layer_type="labels"), "Labels layer"),
        (vol(np.random.randint(0, 3, (8, 16, 16)).astype(np.uint8)), "looks like a label map"),
        (vol(np.full((8, 16, 16), 7.0)), "is constant"),
        (vol(np.where(np.eye(16)[None] > 0, np.nan, 1.0) * np.random.rand(8, 16, 16)), "NaN/Inf"),
        (vol(np.random.rand(8, 16, 16), spacing=(0, 1, 1)), "invalid voxel spacing"),
        (vol(np.random.rand(8, 16, 16), spacing=(1e-6, 1, 1)), "outside"),
        (vol(np.random.rand(8, 16, 16), spacing=(1e5, 1, 1)), "outside"),
        (vol(np.random.rand(1, 16, 16)), "at least 3 voxels"),
    ],
)
def test_bad_images_are_refused_with_a_clear_message(volume, message):
    with pytest.raises(InputError, match=message):
        validate_image(volume)


def test_inf_is_counted():
    data = np.random.rand(8, 16, 16)
    data[0, 0, :3] = np.inf
    with pytest.raises(InputError, match="has 3 NaN/Inf voxels"):
        validate_image(vol(data))


def test_good_image_passes(phantom):
    validate_image(phantom[0])


def test_reference_of_another_grid_refused_when_family_needs_same_grid(phantom):
    from napari_medgen import InputSpec, ModelFamily, Task

    class SameGrid(ModelFamily):
        id = "t.same"
        task = Task.ANOMALY
        display_name = "t"
        version = "1"
        inputs = (InputSpec("references", required=True, same_grid=True),)

    image = phantom[0]
    other = Volume.from_spacing(image.data[:, ::2, ::2], (1, 2, 2), name="ref")
    with pytest.raises(InputError, match="needs the input's grid"):
        validate_inputs(SameGrid(), Inputs(image=image, references=[other]))
    with pytest.raises(InputError, match=r"^t needs 1 reference scan \(given: none\)") as missing:
        validate_inputs(SameGrid(), Inputs(image=image))
    assert str(missing.value).endswith("(--reference PATH on the command line)")


def test_a_missing_reference_is_counted_in_words(phantom):
    from napari_medgen import InputSpec, ModelFamily, Task

    class TwoRefs(ModelFamily):
        id = "t.two"
        task = Task.HARMONIZE
        display_name = "Two refs"
        version = "1"
        inputs = (InputSpec("references", required=True, min_count=2, help="Scans from the target site."),)

    image = phantom[0]
    with pytest.raises(InputError) as few:
        validate_inputs(TwoRefs(), Inputs(image=image, references=[image]))
    assert str(few.value) == (
        "Two refs needs at least 2 reference scans (given: 1). Scans from the target site. "
        "(--reference PATH on the command line)"
    )


def test_points_and_mask_checks(registry, phantom):
    fam = registry.get("classic.procedural").family
    image = phantom[0]
    with pytest.raises(InputError, match="outside the image"):
        validate_inputs(fam, Inputs(image=image, points=np.array([[100.0, 5, 5]])))
    bad_mask = Volume.from_spacing(np.ones((4, 4, 4), bool), name="m")
    with pytest.raises(InputError, match="mask has shape"):
        validate_inputs(fam, Inputs(image=image, mask=bad_mask))
    empty = image.with_data(np.zeros(image.shape, bool))
    with pytest.raises(InputError, match="mask is empty"):
        validate_inputs(fam, Inputs(image=image, mask=empty))


@pytest.mark.parametrize("scale", [(0, 1, 1), (-2, 1, 1), (np.nan, 1, 1)])
def test_layer_with_zero_negative_or_nan_scale_is_refused(scale):
    from napari_medgen.io.napari_io import layer_to_volume

    with pytest.raises(InputError, match="voxel spacing must be positive"):
        layer_to_volume({"data": np.random.rand(8, 16, 16), "scale": scale, "name": "scan"})


def test_missing_spacing_refused_for_superres_only(registry):
    from napari_medgen.io.napari_io import layer_to_volume

    image = layer_to_volume({"data": np.random.rand(8, 16, 16), "name": "scan"})
    assert image.metadata["spacing_missing"]
    with pytest.raises(InputError, match="has no voxel spacing"):
        validate_inputs(registry.get("classic.cubic").family, Inputs(image=image))
    validate_inputs(registry.get("classic.outlier").family, Inputs(image=image))
