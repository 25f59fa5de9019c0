"""Registration of another subject's scan onto the scan's grid (SimpleITK), and the contrast check."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from napari_medgen.io.phantom import make_phantom
from napari_medgen.registration import contrast_agreement, register
from napari_medgen.volume import Volume


def test_register_recovers_a_known_shift_on_another_grid():
    vol, _ = make_phantom((40, 48, 44), spacing=(1.5, 1.0, 1.2), noise=0.0, seed=0)
    vol = vol.with_data(np.pad(vol.data, 6))
    moved_affine = vol.affine.copy()
    moved_affine[:3, 3] += np.array([3.0, -4.0, 2.4])  # world (z, y, x) mm
    moving = Volume(vol.data * 300.0, moved_affine, name="moved")  # another intensity scale too
    reg = register(vol, moving, kind="affine")
    assert reg.data.shape == vol.shape and reg.inside.shape == vol.shape
    unmoved = np.abs(ndimage.shift(vol.data, (2, -4, 2), order=1) - vol.data).mean()
    assert np.abs(reg.data / 300.0 - vol.data).mean() < 0.1 * unmoved
    fg = vol.data > 0.1
    assert contrast_agreement(vol.data, reg.data, fg & reg.inside) > 0.9
    # a reversed tissue order (as T1 vs T2) reads negative
    assert contrast_agreement(vol.data, reg.data.max() - reg.data, fg & reg.inside) < -0.5
