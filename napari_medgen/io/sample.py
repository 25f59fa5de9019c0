"""Sample data: the MNI152 2009a template shipped inside nilearn, and simulated thick slices.

Nothing is downloaded: the template files are package data of the installed ``nilearn``
wheel. :func:`simulate_thick_slices` turns a fine scan into a thick-slice acquisition
with correct geometry; the super-resolution benchmarks reuse it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..errors import InputError, ParamError
from ..volume import Volume, resample_geometry
from .nifti import read_nifti

__all__ = ["mni152_path", "load_mni152", "simulate_thick_slices", "sample_brain", "sample_thick_brain"]

_MNI_FILES = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
_MNI_NAMES = {"t1": "MNI152 T1", "gm": "MNI152 GM", "wm": "MNI152 WM"}
#: FWHM of a Gaussian = this factor x its sigma
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def mni152_path(kind: str = "t1") -> Path:
    """Path of the MNI152 2009a template file (``t1``, ``gm`` or ``wm``) inside the installed nilearn."""
    key = str(kind).lower()
    if key not in _MNI_FILES:
        raise InputError(f"unknown MNI152 template {kind!r}; choose one of {', '.join(_MNI_FILES)}")
    spec = importlib.util.find_spec("nilearn")  # locate without importing (nilearn imports are slow)
    if spec is None or not spec.submodule_search_locations:
        raise InputError("the MNI152 sample needs the 'nilearn' package, which is not installed (pip install nilearn)")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / _MNI_FILES[key]
    if not path.is_file():
        raise InputError(f"the MNI152 {key} template is missing from the installed nilearn ({path}); reinstall nilearn")
    return path


def load_mni152(kind: str = "t1") -> Volume:
    """The MNI152 template as a float32 Volume scaled to [0, 1] (T1 intensity, or GM/WM probability)."""
    volume = read_nifti(mni152_path(kind))
    data = np.asarray(volume.data, dtype=np.float32) / np.float32(255.0)
    return volume.with_data(data, name=_MNI_NAMES[str(kind).lower()])


def simulate_thick_slices(
    volume: Volume,
    slice_mm: float,
    axis: int = 0,
    gap_mm: float = 0.0,
    fwhm_mm: float | None = None,
) -> Volume:
    """Simulate a thick-slice acquisition of ``volume`` along ``axis``.

    Each output slice is the input weighted by a Gaussian slice profile along ``axis``
    (FWHM ``fwhm_mm``, by default the slice thickness ``slice_mm``), sampled every
    ``slice_mm + gap_mm`` millimetres. The output grid comes from
    :func:`~napari_medgen.volume.resample_geometry`: the other axes are unchanged, the
    slice spacing is ``slice_mm + gap_mm``, and the slices are centred in the input's field
    of view so the world bounding boxes agree to within half an output slice. The world
    position of each output slice centre (``out.index_to_world``) is exactly where its
    profile is centred in the input. Values are float32; the input is not modified.
    """
    data = np.asarray(volume.data)
    if data.ndim != 3:
        raise InputError(f"thick slices need a 3D volume, got {data.ndim}D with shape {data.shape}")
    if axis not in (0, 1, 2):
        raise ParamError(f"axis must be 0, 1 or 2, got {axis}")
    slice_mm, gap_mm = float(slice_mm), float(gap_mm)
    if not np.isfinite(slice_mm) or slice_mm <= 0:
        raise ParamError(f"slice thickness must be a positive number of mm, got {slice_mm}")
    if not np.isfinite(gap_mm) or gap_mm < 0:
        raise ParamError(f"slice gap must be zero or a positive number of mm, got {gap_mm}")
    fwhm = slice_mm if fwhm_mm is None else float(fwhm_mm)
    if not np.isfinite(fwhm) or fwhm < 0:
        raise ParamError(f"slice profile FWHM must be zero or positive, got {fwhm_mm}")

    spacing = np.asarray(volume.spacing, dtype=float)
    sigma_vox = fwhm / FWHM_PER_SIGMA / spacing[axis]
    blurred = data.astype(np.float32, copy=True)
    if sigma_vox > 0:
        blurred = ndimage.gaussian_filter1d(blurred, sigma_vox, axis=axis, mode="nearest")

    target = spacing.copy()
    target[axis] = slice_mm + gap_mm
    shape, affine = resample_geometry(volume, target)
    # output index -> input index (a scaling + shift along `axis`, identity elsewhere)
    mapping = np.linalg.inv(volume.affine) @ affine
    out = ndimage.affine_transform(
        blurred,
        mapping[:3, :3],
        offset=mapping[:3, 3],
        output_shape=shape,
        order=1,
        mode="nearest",
    ).astype(np.float32, copy=False)

    metadata = dict(volume.metadata)
    metadata["simulated_thick_slices"] = {
        "slice_mm": slice_mm,
        "gap_mm": gap_mm,
        "fwhm_mm": fwhm,
        "axis": int(axis),
        "source_spacing": spacing.tolist(),
        "source_shape": [int(s) for s in data.shape],
    }
    name = f"{volume.name} {slice_mm:g}mm".strip()
    return Volume(out, affine, name=name, metadata=metadata)


def sample_brain() -> list[tuple]:
    """npe2 sample: the MNI152 T1 template at 1 mm (shown as radiologists read it, like an opened file)."""
    from .napari_io import _present, volume_to_layer_data

    return _present([volume_to_layer_data(load_mni152("t1"), name="MNI152 T1")])


def sample_thick_brain() -> list[tuple]:
    """npe2 sample: the MNI152 T1 with simulated 4 mm axial slices (a super-resolution input)."""
    from .napari_io import _present, volume_to_layer_data

    thick = simulate_thick_slices(load_mni152("t1"), slice_mm=4.0, axis=0)
    return _present([volume_to_layer_data(thick, name="MNI152 T1 4mm")])
