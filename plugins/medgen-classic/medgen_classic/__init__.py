"""Classical baselines for napari-medgen (registered through the ``napari_medgen`` hook).

Families: ``classic.linear`` and ``classic.cubic`` (super-resolution), ``classic.histmatch``
and ``classic.nyul`` (harmonization), ``classic.outlier`` (anomaly map) and
``classic.procedural`` (lesion insertion). See ``medgen_classic.plugin``.
"""

__version__ = "0.1.0"
