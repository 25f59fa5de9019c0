"""The smallest complete napari-medgen model family: copy this package to write your own.

This module is both the family and the plugin. ``pyproject.toml`` points the entry-point
group ``napari_medgen`` at it::

    [project.entry-points.napari_medgen]
    template = "medgen_template"

napari-medgen imports the module, finds :func:`medgen_register_families` (marked with
``@hookimpl``) and calls it with a ``register`` callback. Everything a family needs comes
from the top-level ``napari_medgen`` package; a family never imports napari or Qt, so it
runs the same in the viewer, the ``medgen`` CLI, a notebook and a test.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from napari_medgen import (
    RESEARCH_USE,  # the standard "research use only" statement
    InputError,  # raise with one clear sentence when the user's inputs cannot be used
    Inputs,  # what run() receives: .image, .references, .points, .mask
    InputSpec,  # declares an extra input (references / points / mask)
    ModelFamily,  # the base class
    Output,  # one output volume of a result
    Param,  # a typed parameter: the dock draws it, the CLI parses `--param name=value`
    Result,  # what run() returns: outputs + an info dict
    RunContext,  # progress, cancellation, seeded rng, device, time budget
    Task,  # superres / anomaly / harmonize / lesion
    hookimpl,  # marks the plugin hook below
)

__version__ = "0.1.0"
__all__ = ["ZScoreToReference", "medgen_register_families"]


def _foreground_stats(data: np.ndarray) -> tuple[float, float]:
    """Mean and standard deviation of the voxels brighter than the volume mean (a crude foreground)."""
    arr = np.asarray(data, dtype=np.float64)
    fg = arr[arr > arr.mean()]
    if fg.size < 2:
        raise InputError("the volume has no voxel above its mean intensity; is it empty?")
    return float(fg.mean()), float(fg.std())


class ZScoreToReference(ModelFamily):
    """Rescale the image so its foreground mean and spread match a reference scan."""

    # Unique id, "<package>.<name>" (lower case). The CLI selects it with
    # `medgen run harmonize in.nii.gz -o out.nii.gz --reference ref.nii.gz --family template.zscore`.
    id = "template.zscore"
    # Which dock and CLI sub-command list this family.
    task = Task.HARMONIZE
    # The name users see in the family drop-down.
    display_name = "Z-score to reference"
    # Your family's version; it is written into every result's provenance record.
    version = "0.1.0"
    # One paragraph for the tooltip and `medgen families`: what it does and its limits.
    description = (
        "Linear intensity rescaling: the input's foreground (voxels above the volume mean) gets "
        "the mean and standard deviation of the reference's foreground. 'strength' blends "
        "between the input (0) and the fully rescaled image (1)."
    )
    # What to cite when this family is used (empty if there is nothing to cite).
    citation = ""
    # License of the method and of any weights it ships.
    license = "BSD-3-Clause"
    # Shown next to every result; keep RESEARCH_USE unless you have a regulatory clearance.
    intended_use = RESEARCH_USE
    # True if a GPU makes this family much faster (the dock then shows the device and warns on CPU).
    wants_gpu = False
    # True if run() trains a model (the dock then shows the device and a time budget).
    trains = False
    # True if the same inputs and parameters always give the same output (the dock hides the seed).
    deterministic = True
    # True for a family that only shows how to write one (this one): the docks list it only when the
    # user asks for example families; leave it False in your own family.
    example = True
    # Typed parameters with defaults and ranges. kind is int, float, bool, str or choice.
    params = (
        Param(
            "strength",  # a Python identifier: the key in `params` and in `--param strength=0.5`
            "float",  # kind
            1.0,  # default (validated like any user value)
            help="0 = unchanged input, 1 = fully matched to the reference.",
            minimum=0.0,
            maximum=1.0,
        ),
    )
    # Extra inputs beside the main image. The core checks them before run() is called.
    inputs = (
        InputSpec(
            "references",  # references | points | mask
            required=True,  # the dock asks for it; the CLI refuses to run without it
            min_count=1,
            max_count=1,
            same_grid=False,  # any grid is fine: only intensities are compared
            help="The scan whose intensity profile the input should take.",
        ),
    )

    def run(self, inputs: Inputs, params: dict[str, Any], ctx: RunContext) -> Result:
        """Return a new volume; never modify ``inputs`` (they may be read-only views of layers)."""
        if not inputs.references:
            raise InputError("Z-score to reference needs one reference scan")
        ctx.progress(0, 3, "input statistics")  # also raises Cancelled if the user pressed Cancel
        mean_in, std_in = _foreground_stats(inputs.image.data)
        ctx.progress(1, 3, "reference statistics")
        mean_ref, std_ref = _foreground_stats(inputs.references[0].data)
        if std_in <= 0:
            raise InputError("the input's foreground is flat (zero spread); nothing to rescale")
        ctx.progress(2, 3, "rescaling")
        data = np.asarray(inputs.image.data, dtype=np.float64)  # a new array: the input stays intact
        matched = (data - mean_in) * (std_ref / std_in) + mean_ref
        strength = float(params["strength"])
        blended = strength * matched + (1.0 - strength) * data
        ctx.progress(3, 3, "done")
        # with_data keeps the input's geometry (spacing, origin, direction) and metadata.
        volume = inputs.image.with_data(blended.astype(np.float32), name=f"{inputs.image.name} (z-score)")
        return Result(
            outputs=[Output("image", volume, kind="image", description="intensity-matched image")],
            # Anything JSON-friendly: it ends up in the layer's provenance and the CLI's report.
            info={"input_mean_std": [mean_in, std_in], "reference_mean_std": [mean_ref, std_ref]},
        )


@hookimpl
def medgen_register_families(register: Callable[[object], None]) -> None:
    """Called once by napari-medgen at start-up: register an instance of each family."""
    register(ZScoreToReference())
