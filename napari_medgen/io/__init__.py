"""File input/output: NIfTI and DICOM readers, the NIfTI writer, sample data, a phantom.

:func:`read_volume` is the one entry point for reading a scan (NIfTI file, DICOM file or
DICOM series folder); it raises only :class:`~napari_medgen.errors.InputError`.
"""

from .read import read_volume

__all__ = ["read_volume"]
