"""Built-in model families, registered through the same hook a third-party plugin uses.

The learned generative families live here (one module per task); the classical baselines
live in the separate distribution ``medgen-classic`` under ``plugins/``.
"""

from __future__ import annotations

from typing import Callable

from ..hookspecs import hookimpl


@hookimpl
def medgen_register_families(register: Callable[[object], None]) -> None:
    """Register the built-in families."""
    from .ddpm_anomaly import NormativeDiffusion
    from .harmonize_gan import ConstrainedHarmonization
    from .lesion_diffusion import DiffusionLesion
    from .superres import SelfSupervisedSR
    from .vae_anomaly import NormativeVAE

    register(SelfSupervisedSR())
    register(NormativeDiffusion())
    register(NormativeVAE())
    register(ConstrainedHarmonization())
    register(DiffusionLesion())
