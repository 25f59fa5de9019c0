"""File input/output: NIfTI and DICOM readers, the NIfTI writer, sample data, a phantom."""
