"""Lesions that look acquired with the scan: acquisition-consistent rendering and a diffusion texture model.

A lesion is drawn into the anatomy, not onto the image. Its shape (one or more compartments:
a tumour's necrotic core, solid rim and oedema) is evaluated on a grid finer than the scan's
voxels; inside it the anatomy is replaced by the lesion's intensity (chosen from the scan's
own tissue intensities and the local bias); the change is blurred with the scan's
point-spread function (measured per axis, :func:`napari_medgen.acquisition.effective_fwhm`) and
integrated over each voxel (the slice profile of a thick slice). The scan's own noise stays
as it was: noise is added after the anatomy in an acquisition, so a lesion changes the
signal under it and not the noise, whose level and grain therefore match by construction.

The texture: a MONAI ``DiffusionModelUNet`` (3D, DDIM scheduler) learns, on patches of the
scan itself, to restore a region that was noised while the tissue around it stays clean
(diffusion inpainting). A lesion is refined with it as an image edit: the region around the
lesion, with the rendered lesion in it, is noised to a moderate level and denoised with the
surroundings re-imposed after each step (RePaint-style); the same is done, with the same
noise, to the region without the lesion. The difference of the two is the model's view of the
lesion; its fine (high-pass) departure from the rendering is added inside the lesion, weighted
by the occupancy. The rendering keeps the contrast, the edges and the partial volume, the model
gives the texture, and the scan's noise is never replaced.

Only voxels inside the lesion's support dilated by the stated margin (face-connected steps,
recorded in the result) can change; every other voxel is bit-identical.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from ..acquisition import (
    FWHM_PER_SIGMA,
    band_pass,
    effective_fwhm,
    looks_like_ct,
    noise_sigma,
    tissue_levels,
    tissue_texture,
)
from ..errors import InputError, ParamError
from ..family import (
    AUTO,
    RESEARCH_USE,
    Inputs,
    InputSpec,
    ModelFamily,
    Output,
    OutputSpec,
    Param,
    Result,
    RunContext,
    Task,
    training_steps_param,
)
from ..masks import foreground_mask, given_mask, random_rotation
from ..volume import Volume

__all__ = ["DiffusionLesion", "LESION_TYPES", "PRESETS"]



@dataclass(frozen=True)
class LesionType:
    label: str
    modality: str  # "mr" or "ct"
    diameter: tuple[float, float]  # mm
    tissue: str  # where a random lesion is centred: "wm" or "lung"
    contrast: float  # MR: grey-white units from WM; CT: HU
    aspect: tuple[float, float]  # longest / shortest semi-axis
    irregularity: float


LESION_TYPES: dict[str, LesionType] = {
    # ovoid white-matter plaques: WM + 2 x (GM - WM): brighter than GM on T2/FLAIR, darker on T1
    "ms": LesionType("MS plaque", "mr", (3.0, 15.0), "wm", 2.0, (1.2, 2.0), 0.25),
    # necrotic core (fluid-like), solid rim (GM-like, 'enhancing' when contrast > 1 on post-Gd T1), oedema
    "tumour": LesionType("tumour (core, rim, oedema)", "mr", (15.0, 40.0), "wm", 1.6, (1.0, 1.4), 0.35),
    "nodule-solid": LesionType("solid lung nodule", "ct", (4.0, 20.0), "lung", 30.0, (1.0, 1.3), 0.3),
    "nodule-ground-glass": LesionType("ground-glass lung nodule", "ct", (6.0, 25.0), "lung", -550.0, (1.0, 1.5), 0.5),
}

_SHORT = {"ms": "MS", "tumour": "tumour", "nodule-solid": "solid nodule",
          "nodule-ground-glass": "ground-glass nodule"}


def _typical(what: str, modality: str | None = None) -> str:
    """Each lesion type's typical value of one setting, in words (the "auto" text of its parameter)."""
    out = []
    for name, kind in LESION_TYPES.items():
        if modality is not None and kind.modality != modality:
            continue
        if what == "diameter":
            value = f"{kind.diameter[0]:g}-{kind.diameter[1]:g} mm"
        elif what == "contrast":
            value = f"{kind.contrast:g}" + (" (the oedema)" if name == "tumour" else "")
        elif what == "hu":
            value = f"{kind.contrast:g} HU"
        else:
            value = f"{getattr(kind, what):g}"
        out.append(f"{_SHORT.get(name, name)} {value}")
    return ", ".join(out)


def _given(value: Any) -> float | None:
    """A number the user set, or None for "auto" (the lesion type's typical value)."""
    return None if isinstance(value, str) and value.strip().lower() == AUTO else float(value)


#: values that meant "the type's typical" before these parameters took "auto"; still accepted from the API
_LEGACY_TYPICAL = {
    "diameter_min_mm": lambda v: v == 0,
    "diameter_max_mm": lambda v: v == 0,
    "irregularity": lambda v: v < 0,
}

#: tumour geometry: the core ends at this fraction of the radius, the oedema reaches this multiple of it
_CORE_FRACTION = 0.45
_OEDEMA_REACH = (1.5, 2.1)
#: tumour compartment labels in the 'compartments' output (the BraTS convention)
COMPARTMENTS = {1: "necrotic core", 2: "solid / enhancing rim", 3: "oedema"}


@dataclass(frozen=True)
class Preset:
    channels: tuple[int, ...]
    patch: int
    batch: int
    lr: float
    max_steps: int
    train_seconds: float
    ddim_steps: int


PRESETS = {
    # at most 5 minutes of training on 2 CPU cores (3D convolutions are slow there: ~0.5 s a step)
    "fast": Preset(channels=(8, 16, 16), patch=16, batch=4, lr=2e-3, max_steps=600, train_seconds=300.0,
                   ddim_steps=4),
    # a GPU: wider, larger patches, more steps
    "quality": Preset(channels=(32, 64, 64), patch=32, batch=16, lr=1e-3, max_steps=20000, train_seconds=900.0,
                      ddim_steps=10),
}
TRAIN_STEPS = 1000
TRAIN_T = (20, 500)

#: trained texture models of this session, by scan and settings (so batch variants train once)
_MODEL_CACHE: dict[str, dict] = {}


def _scheduler():
    from monai.networks.schedulers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=TRAIN_STEPS, schedule="linear_beta", clip_sample=False,
                         prediction_type="sample")


def _build(preset: Preset):
    from monai.networks.nets import DiffusionModelUNet

    return DiffusionModelUNet(
        spatial_dims=3, in_channels=2, out_channels=1, channels=preset.channels,
        attention_levels=(False,) * len(preset.channels), num_res_blocks=1, norm_num_groups=8,
    )


@dataclass
class Shape:
    """A lesion's outline: an ellipsoid (world mm) with a smooth random modulation of its radius."""

    semi: np.ndarray  # (3,) mm
    rot: np.ndarray  # (3, 3) lesion frame <- world
    dirs: np.ndarray  # (K, 3) unit vectors of the modulation
    freq: np.ndarray  # (K,)
    phase: np.ndarray  # (K,)
    amp: np.ndarray  # (K,)
    reach: float = 1.0  # tumours: how far the oedema reaches, in radii

    @classmethod
    def random(cls, diameter: float, aspect: tuple[float, float], irregularity: float, rng) -> "Shape":
        ratio = rng.uniform(*aspect)
        semi = np.array([ratio, 1.0, 1.0]) * rng.uniform(0.85, 1.15, 3)
        semi = semi * (diameter / 2.0) / np.cbrt(np.prod(semi))  # equivalent diameter kept
        k = 8
        dirs = rng.standard_normal((k, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        return cls(semi, random_rotation(rng), dirs, rng.integers(1, 4, k).astype(float), rng.uniform(0, 2 * np.pi, k),
                   rng.normal(0.0, 0.12 * irregularity, k))

    def q(self, offsets_mm: np.ndarray) -> np.ndarray:
        """Normalised radius at world offsets (..., 3): inside where <= 1."""
        u = offsets_mm @ self.rot.T
        q = np.sqrt(np.sum((u / self.semi) ** 2, axis=-1))
        if np.any(self.amp):
            norm = np.linalg.norm(u, axis=-1, keepdims=True)
            unit = u / np.maximum(norm, 1e-6)
            mod = np.zeros(q.shape, dtype=np.float64)
            for d, f, p, a in zip(self.dirs, self.freq, self.phase, self.amp):
                mod += a * np.cos(np.pi * f * (unit @ d) + p)
            q = q * np.exp(mod)
        return q

    @property
    def radius(self) -> float:
        return float(self.semi.max() * np.exp(np.abs(self.amp).sum()))


@dataclass
class MaskShape:
    """A given lesion's exact voxels: its bounding box in the image and the mask inside that box."""

    box: tuple[slice, ...]
    inside: np.ndarray

    def on(self, box: tuple[slice, ...]) -> np.ndarray:
        """The lesion's voxels on a box that holds this one."""
        out = np.zeros(tuple(b.stop - b.start for b in box), dtype=bool)
        out[tuple(slice(a.start - b.start, a.stop - b.start) for a, b in zip(self.box, box))] = self.inside
        return out


class DiffusionLesion(ModelFamily):
    """Lesions rendered with the scan's own resolution, bias and noise; texture from a diffusion model."""

    id = "medgen.lesion_diffusion"
    task = Task.LESION
    display_name = "Acquisition-consistent lesions (optional diffusion texture)"
    version = "0.1.0"
    priority = 10
    description = (
        "Inserts MS plaques, tumours (necrotic core, solid rim, oedema) or lung nodules (CT, solid or "
        "ground-glass) that look acquired with the scan. Each lesion is drawn into the anatomy on a grid "
        "finer than the voxels, at an intensity taken from the scan's own tissues (white/grey matter, CSF; "
        "HU for CT) and the local bias, then blurred with the scan's measured point-spread function per "
        "axis and integrated over each voxel (a thick slice's profile). The scan's noise is kept as it "
        "was, so it matches in level and grain. Optionally (texture=diffusion) a 3D diffusion model (MONAI "
        "DiffusionModelUNet, DDIM) trained on the scan's own patches adds an inpainting edit's texture. "
        "Only voxels within the stated margin of a lesion change. "
        "Outputs: the image, one label per lesion, the tumour compartments, a table of lesions."
    )
    citation = (
        "Lugmayr A et al. RePaint: Inpainting using denoising diffusion probabilistic models. CVPR 2022. "
        "Meng C et al. SDEdit: guided image synthesis and editing with stochastic differential equations. "
        "ICLR 2022. Song J et al. Denoising diffusion implicit models. ICLR 2021. Pinaya WHL et al. "
        "Generative AI for medical imaging: extending the MONAI framework. 2023."
    )
    license = "BSD-3-Clause"
    intended_use = RESEARCH_USE
    wants_gpu = True
    trains = True  # texture=diffusion trains a model on the scan (the time budget applies to it)
    outputs = (
        OutputSpec("image", "image", "the scan with the lesions inserted"),
        OutputSpec("mask", "labels", "one label per lesion (1..N): voxels at least half lesion"),
        OutputSpec("compartments", "labels", "tumours: 1 necrotic core, 2 solid rim, 3 oedema"),
    )
    params = (
        Param("lesion_type", "choice", "ms", choices=tuple(LESION_TYPES), label="lesion type",
              help="ms: ovoid white-matter plaques (MR); tumour: necrotic core, solid rim and oedema (MR); "
              "nodule-solid / nodule-ground-glass: lung nodules (CT, Hounsfield units)."),
        Param("n_lesions", "int", 10, minimum=1, maximum=200, label="number of lesions",
              help="How many lesions to place at random (ignored when points or lesion masks are given)."),
        Param("diameter_min_mm", "float", AUTO, minimum=1.0, maximum=150.0, label="smallest diameter",
              unit="mm",
              auto="the lesion type's typical range: " + _typical("diameter"),
              help="Smallest equivalent diameter. Tumours: without the oedema."),
        Param("diameter_max_mm", "float", AUTO, minimum=1.0, maximum=150.0, label="largest diameter",
              unit="mm",
              auto="the top of the lesion type's typical range (at least the smallest diameter): "
              + _typical("diameter"),
              help="Largest equivalent diameter. Tumours: without the oedema."),
        Param("contrast", "float", AUTO, minimum=-10.0, maximum=10.0, unit="GM-WM units",
              auto="the lesion type's typical: " + _typical("contrast", "mr"),
              help="MR: lesion intensity as WM + contrast x (GM - WM) of this scan, so one value is "
              "T2/FLAIR-bright and T1-dark. Tumours: the oedema's. CT: ignored (see nodule density)."),
        Param("relative_contrast", "float", AUTO, minimum=-0.95, maximum=5.0, label="contrast to WM",
              unit="fraction of WM", auto="set by 'contrast' instead",
              help="MR: lesion intensity relative to the white matter around it (-0.4 = 40% darker, +0.8 = 80% "
              "brighter); replaces 'contrast'. Tumours: the oedema's."),
        Param("nodule_hu", "float", AUTO, minimum=-1000.0, maximum=400.0, label="nodule density", unit="HU",
              auto="the nodule type's typical: " + _typical("hu", "ct"),
              help="CT nodules: density in Hounsfield units."),
        Param("contrast_jitter", "float", 0.2, minimum=0.0, maximum=0.9, label="contrast jitter",
              unit="fraction",
              help="Relative random variation of each lesion's contrast (0 = all equal)."),
        Param("irregularity", "float", AUTO, minimum=0.0, maximum=1.0, unit="0-1",
              auto="the lesion type's typical: " + _typical("irregularity"),
              help="0 = smooth ellipsoid, 1 = very lobulated."),
        Param("placement", "choice", "auto", choices=("auto", "points", "random", "region", "masks"),
              help="auto: the points if given, else random; points: one lesion centred on each point; random: "
              "in the tissue the type needs (white matter, lung); region: random inside the given mask; "
              "masks: each label of the given mask is one lesion's exact shape."),
        Param("texture", "choice", "none", choices=("none", "diffusion", "tissue"),
              help="Interior texture added to the rendering, as strong as this scan's own tissue texture "
              "(measured): diffusion: its pattern from a diffusion model trained on this scan (minutes); "
              "tissue: a random field (no training); none (the default): the rendering with the scan's own "
              "noise only, which the project's realism benchmark finds hardest to tell from real lesions."),
        Param("strength", "float", 0.2, minimum=0.0, maximum=0.5, unit="fraction of the schedule",
              help="How far the diffusion model may reshape a lesion (the noise level of the edit, "
              "as a fraction of the schedule)."),
        Param("preset", "choice", "fast", choices=tuple(PRESETS),
              help="fast: minutes on a CPU; quality: a wider model and more steps (GPU)."),
        training_steps_param("the preset's", what="training the texture model"),
        Param("model_file", "str", "", path="read", suffixes=(".safetensors",),
              help="Use a texture model saved from an earlier run on this scan's kind (skips training)."),
        Param("save_model", "str", "", path="write", suffixes=(".safetensors",),
              help="Save the trained texture model here (.safetensors + .json card)."),
    )
    inputs = (
        InputSpec("points", required=False, help="Lesion centres (one lesion per point)."),
        InputSpec("mask", required=False,
                  help="Where to place lesions (placement 'region') or the lesions' exact shapes "
                  "(placement 'masks', one label per lesion)."),
    )

    def resolve_params(self, given: dict[str, Any] | None = None) -> dict[str, Any]:
        """As for every family; the old "typical" sentinels (a diameter of 0, irregularity -1) mean "auto"."""
        given = dict(given or {})
        for name, was_typical in _LEGACY_TYPICAL.items():
            value = given.get(name)
            number = isinstance(value, (int, float, np.number)) and not isinstance(value, bool)
            if number and was_typical(value):
                given[name] = AUTO
        return super().resolve_params(given)

    # -- the scan --------------------------------------------------------------------------------
    def _check_modality(self, kind: LesionType, data: np.ndarray, name: str) -> None:
        ct = looks_like_ct(data)
        if kind.modality == "ct" and not ct:
            raise InputError(
                f"lesion type '{name}' is for CT (Hounsfield units), but this scan's intensities "
                f"({np.percentile(data, 1):.0f} to {np.percentile(data, 99):.0f}) are not HU: air near -1000 "
                "is missing. Use 'ms' or 'tumour' for MR."
            )
        if kind.modality == "mr" and ct:
            raise InputError(
                f"lesion type '{name}' is for MR, but this scan looks like CT (Hounsfield units, air near "
                "-1000). Use 'nodule-solid' or 'nodule-ground-glass'."
            )

    @staticmethod
    def _thick_check(spacing: np.ndarray, dmin: float) -> None:
        thick = float(spacing.max())
        if dmin < thick:
            raise InputError(
                f"lesions of {dmin:.0f} mm are thinner than this scan's {thick:.1f} mm slices: they would vanish "
                f"in the slice's partial volume while the mask still holds them. Set the smallest diameter to at "
                f"least {np.ceil(thick):.0f} mm (or use the thin-slice scan)."
            )

    # -- placement -------------------------------------------------------------------------------
    @staticmethod
    def _tissue_region(kind: LesionType, data, fg, tissue, spacing) -> tuple[np.ndarray, str]:
        if kind.tissue == "lung":
            lung = fg & (data < -400.0) & (data > -1000.0)
            lung = ndimage.binary_opening(lung, iterations=1)
            return lung, "lung"
        wm = tissue.labels == 3
        return wm, "white matter"

    def _random_centres(self, region: np.ndarray, n: int, radii_mm: list[float], spacing, rng, where: str,
                        affine_lin) -> list[np.ndarray]:
        """``n`` centres in ``region``, each lesion's ball in the region's neighbourhood, none overlapping."""
        flat = np.flatnonzero(region)
        if flat.size == 0:
            raise InputError(f"no {where} found in this scan to place lesions in; click points instead")
        # the lesion's centre must lie deep enough in the tissue: half its radius inside it
        depth = ndimage.distance_transform_edt(region, sampling=spacing)
        centres: list[np.ndarray] = []
        placed_r: list[float] = []
        tries = 0
        for r in radii_mm:
            ok = False
            need = min(0.5 * r, float(depth.max()) * 0.9)
            while tries < 400 * n:
                tries += 1
                c = np.asarray(np.unravel_index(int(flat[rng.integers(flat.size)]), region.shape), dtype=float)
                if depth[tuple(c.astype(int))] < need:
                    continue
                w = affine_lin @ c
                if all(np.linalg.norm(w - affine_lin @ o) > (r + ro) * 1.15 + 2 * float(spacing.max())
                       for o, ro in zip(centres, placed_r)):
                    centres.append(c)
                    placed_r.append(r)
                    ok = True
                    break
            if not ok:
                raise InputError(
                    f"the {where} of this scan holds only {len(centres)} non-overlapping lesion(s) of this size; "
                    f"ask for fewer (asked {n}) or smaller lesions"
                )
        return centres

    @staticmethod
    def _check_points(points, image: Volume, region: np.ndarray, where: str) -> list[np.ndarray]:
        pts = np.atleast_2d(np.asarray(points, dtype=float))
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise InputError(f"points must be an (N, 3) array of voxel indices; got shape {pts.shape}")
        upper = np.asarray(image.shape) - 0.5
        out = []
        for i, p in enumerate(pts):
            label = "(" + ", ".join(f"{v:.0f}" for v in p) + ")"
            if not np.all(np.isfinite(p)) or np.any(p < -0.5) or np.any(p > upper):
                raise InputError(f"point {i + 1} at index {label} lies outside the image (shape {image.shape})")
            idx = tuple(np.clip(np.round(p).astype(int), 0, np.asarray(image.shape) - 1))
            if not region[idx]:
                raise InputError(f"point {i + 1} at index {label} is not in the {where}; move it into the tissue")
            out.append(p)
        return out

    # -- run ---------------------------------------------------------------------------------------
    def run(self, inputs: Inputs, params: dict[str, Any], ctx: RunContext) -> Result:
        image = inputs.image
        data = np.asarray(image.data, dtype=np.float32)
        spacing = np.asarray(image.spacing, dtype=float)
        rng = ctx.rng
        name = params["lesion_type"]
        kind = LESION_TYPES[name]
        given_min, given_max = _given(params["diameter_min_mm"]), _given(params["diameter_max_mm"])
        dmin = kind.diameter[0] if given_min is None else given_min
        dmax = max(kind.diameter[1], dmin) if given_max is None else given_max
        if dmax < dmin:
            raise ParamError(f"largest diameter ({dmax:g} mm) is below the smallest ({dmin:g} mm)")
        given_irregularity = _given(params["irregularity"])
        irregularity = kind.irregularity if given_irregularity is None else given_irregularity
        if not np.all(np.isfinite(data)):
            raise InputError("the scan holds NaN or infinite values; lesions cannot be matched to it")
        self._check_modality(kind, data, name)

        has_points = inputs.points is not None and np.asarray(inputs.points).size > 0
        mode = params["placement"]
        if mode == "auto":
            mode = "points" if has_points else "random"
        if mode == "points" and not has_points:
            raise InputError("placement 'points' needs at least one point: click points on a Points layer")
        if mode in ("region", "masks") and inputs.mask is None:
            raise InputError(f"placement '{mode}' needs a mask on the image's grid")
        if mode != "masks":
            self._thick_check(spacing, dmin)

        ctx.progress(0, 100, "measuring the scan: foreground, noise, resolution, tissues")
        fg = foreground_mask(data, spacing, check=ctx.check_cancelled)
        sigma = noise_sigma(data, fg, check=ctx.check_cancelled, spacing=spacing)
        fwhm = np.asarray(effective_fwhm(data, spacing, fg, sigma, check=ctx.check_cancelled))
        ctx.check_cancelled()
        tissue = tissue_levels(data, fg, spacing) if kind.modality == "mr" else None
        region, where = self._tissue_region(kind, data, fg, tissue, spacing)
        lin = np.asarray(image.affine[:3, :3], dtype=float)

        # -- lesions: centres, sizes, shapes
        shapes: list[Any] = []  # Shape, or MaskShape for placement 'masks'
        if mode == "masks":
            labels_in = np.asarray(inputs.mask.data)
            if labels_in.shape != image.shape:
                raise InputError(f"the lesion mask has shape {labels_in.shape}, the image {image.shape}; "
                                 "it must be on the image's grid")
            ids, index = np.unique(labels_in, return_inverse=True)
            index = index.reshape(labels_in.shape)  # 0 .. len(ids) - 1, in the order of the labels' values
            if not np.any(ids != 0):
                raise InputError("the lesion mask is empty: it has no non-zero voxel")
            centres = []
            for k, box in enumerate(ndimage.find_objects(index + 1), start=0):
                if ids[k] == 0 or box is None:
                    continue
                m = index[box] == k
                centres.append(np.asarray(ndimage.center_of_mass(m)) + [b.start for b in box])
                shapes.append(MaskShape(box, m))
            if ((labels_in != 0) & ~fg).sum() > 0.5 * (labels_in != 0).sum():
                raise InputError("most of the lesion mask lies outside the scan's tissue")
        else:
            n = int(params["n_lesions"])
            if mode == "points":
                # MR: anywhere in the imaged tissue (a lesion may be juxtacortical); CT: in the lungs
                centres = self._check_points(inputs.points, image, fg if kind.modality == "mr" else region,
                                             "scan's tissue" if kind.modality == "mr" else where)
                n = len(centres)
            diameters = [float(rng.uniform(dmin, dmax)) for _ in range(n)]
            reach = _OEDEMA_REACH[1] if name == "tumour" else 1.0
            organ = "lungs" if kind.tissue == "lung" else "imaged tissue"
            body = region if kind.tissue == "lung" else fg
            thickest = 2.0 * float(ndimage.distance_transform_edt(np.pad(body, 1), sampling=spacing).max())
            if dmin > thickest or region.sum() * np.prod(spacing) < np.pi / 6 * dmin ** 3:
                raise InputError(
                    f"a {dmin:.0f} mm {kind.label} is larger than the {organ} of this scan "
                    f"({thickest:.0f} mm at the thickest); use smaller diameters"
                )
            diameters = [min(d, thickest) for d in diameters]
            radii = [d / 2.0 * reach * 1.2 for d in diameters]
            if mode == "random":
                centres = self._random_centres(region, n, radii, spacing, rng, where, lin)
            elif mode == "region":
                user = given_mask(inputs.mask, image, "to place lesions in")
                centres = self._random_centres(user & fg, n, radii, spacing, rng, "given region", lin)
            for i in range(n):
                shapes.append(Shape.random(diameters[i], kind.aspect, irregularity, rng))
                if name == "tumour":
                    shapes[-1].reach = float(rng.uniform(*_OEDEMA_REACH))
            if mode == "points":
                self._check_overlap(centres, shapes, lin, reach)

        # -- levels
        levels = self._levels(kind, name, params, tissue, len(centres), rng)

        # -- texture model
        net = None
        train_info: dict[str, Any] = {}
        texture = params["texture"]
        if texture == "diffusion":
            net, train_info = self._texture_model(image, data, fg, params, ctx)
        texture_amp = tissue_texture(data, region, spacing, sigma) if texture != "none" else 0.0
        tissue_ref = (tissue.wm if tissue is not None else float(np.median(data[region]))) if region.any() else 1.0

        # -- render
        out = data.copy()
        labels = np.zeros(image.shape, dtype=np.uint16)
        comps = np.zeros(image.shape, dtype=np.uint8) if name == "tumour" else None
        sigma_g = self._psf_sigmas(fwhm, spacing)
        # the point-spread function's reach (2.5 sigma) beyond the partial-volume voxel outside the mask
        margin = int(min(3, 1 + math.ceil(2.5 * float(np.max(np.sqrt(sigma_g**2 + spacing**2 / 12.0) / spacing)))))
        under = _LocalLevel(data, spacing)
        records = []
        n = len(centres)
        for i, (centre, shape) in enumerate(zip(centres, shapes)):
            ctx.check_cancelled()
            ctx.progress(60 + int(38 * i / max(n, 1)), 100, f"lesion {i + 1}/{n}")
            rec = self._insert(
                out, labels, comps, data, under, fg, tissue, centre, shape, i + 1, name, kind, levels[i],
                lin, spacing, sigma_g, margin, net, params, ctx, region, (texture, texture_amp, tissue_ref),
            )
            rec["centre_world_mm"] = [float(v) for v in image.index_to_world(centre)[0]]
            records.append(rec)
        ctx.progress(100, 100, "done")
        missing = [r["label"] for r in records if r["voxels"] == 0]
        if missing:  # pragma: no cover - the centre voxel is always labelled
            raise InputError(f"lesion(s) {missing} cover no voxel at this resolution")

        base = image.name or "image"
        outputs = [
            Output("image", image.with_data(out, name=f"{base} (lesions)"), kind="image",
                   description=f"{n} {kind.label}(s) inserted, margin {margin} voxel(s)"),
            Output("mask", image.with_data(labels, name=f"{base} (lesion mask)"), kind="labels",
                   description="one label per lesion"),
        ]
        if comps is not None:
            outputs.append(Output("compartments", image.with_data(comps, name=f"{base} (tumour compartments)"),
                                  kind="labels", description="1 necrotic core, 2 solid rim, 3 oedema"))
        info = {
            "lesion_type": name,
            "placement": mode,
            "margin_voxels": margin,
            "margin_rule": f"only voxels within {margin} face-connected step(s) of a lesion's support change",
            "noise_sigma": sigma,
            "psf_fwhm_mm": [float(v) for v in fwhm],
            "texture": texture,
            "tissue_texture": texture_amp,
            "lesions": records,
        }
        if tissue is not None:
            info["tissue_levels"] = tissue.record()
        if comps is not None:
            info["compartments"] = COMPARTMENTS
        info.update(train_info)
        return Result(outputs, info)

    # -- pieces ------------------------------------------------------------------------------------
    @staticmethod
    def _check_overlap(centres, shapes, lin, reach) -> None:
        for i in range(len(centres)):
            for j in range(i):
                dist = float(np.linalg.norm(lin @ (np.asarray(centres[i]) - np.asarray(centres[j]))))
                if dist < (shapes[i].radius + shapes[j].radius) * reach:
                    raise InputError(
                        f"points {j + 1} and {i + 1} are {dist:.0f} mm apart: their lesions would overlap; "
                        "move them apart or use smaller diameters"
                    )

    @staticmethod
    def _levels(kind: LesionType, name: str, params, tissue, n: int, rng) -> list[dict[str, float]]:
        """Per lesion: its contrast parameter(s), before the local bias is applied."""
        jitter = float(params["contrast_jitter"])
        out = []
        for _ in range(n):
            f = 1.0 + jitter * rng.uniform(-1.0, 1.0)
            if kind.modality == "ct":
                hu = _given(params["nodule_hu"])
                hu = kind.contrast if hu is None else hu
                spread = 15.0 if name == "nodule-solid" else 80.0
                out.append({"hu": hu + spread * (jitter / 0.2) * rng.uniform(-1.0, 1.0)})
            else:
                rel = _given(params["relative_contrast"])
                if rel is not None:
                    out.append({"relative_contrast": rel * f})
                else:
                    contrast = _given(params["contrast"])
                    out.append({"contrast": (kind.contrast if contrast is None else contrast) * f})
        return out

    @staticmethod
    def _psf_sigmas(fwhm: np.ndarray, spacing: np.ndarray) -> np.ndarray:
        """The Gaussian part of each axis' point-spread function (mm), the voxel's box being the rest."""
        total = (fwhm / FWHM_PER_SIGMA) ** 2
        return np.sqrt(np.maximum(total - spacing**2 / 12.0, 1e-6))

    def _insert(self, out, labels, comps, data, level_under, fg, tissue, centre, shape, label, name, kind, level,
                lin, spacing, sigma_g, margin, net, params, ctx, region, tex) -> dict[str, Any]:
        centre = np.asarray(centre, dtype=float)
        shape_arr = np.asarray(data.shape)
        if isinstance(shape, MaskShape):  # an exact voxel mask
            lo_l = np.array([b.start for b in shape.box])
            hi_l = np.array([b.stop for b in shape.box])
            reach_mm = 0.0
        else:
            reach = _OEDEMA_REACH[1] if name == "tumour" else 1.0
            reach_mm = shape.radius * reach
            half = np.ceil(reach_mm / spacing).astype(int) + 1
            lo_l = np.floor(centre).astype(int) - half
            hi_l = np.ceil(centre).astype(int) + half + 1
        pad = margin + 1
        lo = np.maximum(lo_l - pad, 0)
        hi = np.minimum(hi_l + pad, shape_arr)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
        bshape = tuple(int(v) for v in hi - lo)
        # supersampling per axis: about 0.5 mm, at most 16M fine voxels
        fac = np.clip(np.round(spacing / 0.5), 1, 8).astype(int)
        while np.prod(np.asarray(bshape) * fac) > 16_000_000 and fac.max() > 1:
            fac[np.argmax(fac)] -= 1
        fshape = tuple(int(v) for v in np.asarray(bshape) * fac)
        # fine-grid positions (voxel index units) and world offsets from the centre
        axes = [lo[a] + (np.arange(fshape[a]) + 0.5) / fac[a] - 0.5 for a in range(3)]

        # compartment occupancy on the fine grid
        if isinstance(shape, MaskShape):
            # shape-based interpolation: the signed distance (mm) to the mask's border, linear on the
            # fine grid, negative inside. A mask holds the voxels at least half lesion, so its border
            # lies between voxel centres, and the slices at a lesion's ends taper (partial volume)
            # instead of ending in a step a whole thick slice high.
            sub = shape.on(box)
            sd = (ndimage.distance_transform_edt(~sub, sampling=spacing)
                  - ndimage.distance_transform_edt(sub, sampling=spacing)).astype(np.float32)
            coords = np.meshgrid(*[(np.arange(fshape[a]) + 0.5) / fac[a] - 0.5 for a in range(3)], indexing="ij",
                                 sparse=True)
            fine_sd = ndimage.map_coordinates(sd, np.broadcast_arrays(*coords), order=1, mode="nearest")
            parts = {1: fine_sd < 0}
            del fine_sd, sd
            tumour_q = None
        else:
            grid = np.stack(np.meshgrid(*[a - c for a, c in zip(axes, centre)], indexing="ij"), axis=-1)
            offsets = grid @ lin.T
            del grid
            q = shape.q(offsets).astype(np.float32)
            del offsets
            if name == "tumour":
                reach = shape.reach
                parts = {1: q <= _CORE_FRACTION, 2: (q > _CORE_FRACTION) & (q <= 1.0), 3: (q > 1.0) & (q <= reach)}
                # oedema spreads in tissue, not into CSF
                tis = np.repeat(np.repeat(np.repeat(tissue.labels[box] >= 2, fac[0], 0), fac[1], 1), fac[2], 2)
                parts[3] &= tis
                tumour_q = q
            else:
                parts = {1: q <= 1.0}
                tumour_q = None
            del q

        # the anatomy under the lesion: a local Gaussian mean (linear, so the scan's noise left inside the
        # lesion is the scan's own, not a median filter's high-passed residue)
        under = level_under.get(box)

        def up(a):
            return np.repeat(np.repeat(np.repeat(a, fac[0], 0), fac[1], 1), fac[2], 2)

        under_f = up(under)
        lvl = self._lesion_levels(kind, name, level, data, fg, tissue, centre, spacing, region)
        delta_f = np.zeros(fshape, dtype=np.float32)
        for k, occ in parts.items():
            target = lvl[k] if k in lvl else lvl[1]
            delta_f += occ * (np.float32(target) - under_f)
        del under_f
        # point-spread function: the Gaussian part on the fine grid, then the voxel's box
        fine_sigma = sigma_g / (spacing / fac)
        delta_f = ndimage.gaussian_filter(delta_f, fine_sigma, mode="constant", truncate=3.0)

        def down(a):
            s = a.shape
            return a.reshape(s[0] // fac[0], fac[0], s[1] // fac[1], fac[1], s[2] // fac[2], fac[2]).mean(
                axis=(1, 3, 5), dtype=np.float32)

        delta = down(delta_f)
        del delta_f
        occ_all = np.zeros(bshape, dtype=np.float32)
        occ_k = {}
        for k, occ in parts.items():
            occ_k[k] = down(occ.astype(np.float32))
            occ_all += occ_k[k]
        lesion_vox = occ_all >= 0.5
        cidx = tuple(int(v) for v in np.clip(np.round(centre).astype(int) - lo, 0, np.asarray(bshape) - 1))
        if not isinstance(shape, MaskShape):
            lesion_vox[cidx] = True  # a lesion always holds its own centre voxel
        else:
            lesion_vox = shape.on(box)
        # the stated rule: nothing further than `margin` face-connected steps from the returned mask
        zone = ndimage.binary_dilation(lesion_vox, iterations=margin)
        delta[~zone] = 0.0

        texture, amp, ref = tex
        if texture != "none" and amp > 0 and lesion_vox.any():
            # interior texture as strong as the scan's own tissue texture (relative to its level for MR)
            if kind.modality == "mr":
                amp = amp * abs(float(lvl[1])) / max(abs(ref), 1e-6)
            if texture == "diffusion" and net is not None and float(params["strength"]) > 0:
                pattern = self._refine(net, data[box], delta, zone, params, ctx, label) - delta
            else:
                pattern = np.random.default_rng([int(ctx.seed), int(label), 7]).standard_normal(bshape)
            pattern = band_pass(pattern.astype(np.float32), spacing)
            std = float(pattern[lesion_vox].std())
            if std > 0:
                delta += np.clip(occ_all, 0.0, 1.0) * pattern * np.float32(amp / std)
            delta[~zone] = 0.0

        region_out = out[box]
        region_out[zone] = data[box][zone] + delta[zone]
        lab = labels[box]
        lab[lesion_vox] = label
        if comps is not None and tumour_q is not None:
            cb = comps[box]
            best = np.argmax(np.stack([occ_k.get(k, np.zeros(bshape, np.float32)) for k in (1, 2, 3)]), axis=0) + 1
            cb[lesion_vox] = best[lesion_vox].astype(np.uint8)
        voxels = int(lesion_vox.sum())
        vox_mm3 = float(np.prod(spacing))
        rec: dict[str, Any] = {
            "label": int(label),
            "type": name,
            "centre_index": [float(v) for v in centre],
            "voxels": voxels,
            "volume_mm3": voxels * vox_mm3,
            "equivalent_diameter_mm": float(np.cbrt(6.0 * voxels * vox_mm3 / np.pi)),
            "local_tissue": float(lvl["local"]),
        }
        if name == "tumour":
            rec.update({f"intensity_{COMPARTMENTS[k].split()[-1]}": float(lvl[k]) for k in (1, 2, 3)})
        else:
            rec["intensity"] = float(lvl[1])
        rec.update({k: float(v) for k, v in level.items()})
        if comps is not None and tumour_q is not None:
            rec["compartment_voxels"] = [int((comps[box][lesion_vox & (lab == label)] == k).sum()) for k in (1, 2, 3)]
        return rec

    @staticmethod
    def _lesion_levels(kind, name, level, data, fg, tissue, centre, spacing, region) -> dict:
        """Each compartment's intensity at this place: the scan's tissue levels times the local bias."""
        r = np.ceil(20.0 / spacing).astype(int)
        c = np.round(centre).astype(int)
        box = tuple(slice(max(0, a - b), a + b + 1) for a, b in zip(c, r))
        if kind.modality == "ct":
            local = data[box][region[box]]
            base = float(np.median(local)) if local.size >= 20 else -850.0
            return {1: level["hu"], "local": base}
        wm_local = data[box][tissue.labels[box] == 3]
        wm = float(np.median(wm_local)) if wm_local.size >= 30 else tissue.wm
        bias = wm / tissue.wm if tissue.wm != 0 else 1.0
        if "relative_contrast" in level:
            main = wm * (1.0 + level["relative_contrast"])
        else:
            main = wm + level["contrast"] * bias * (tissue.gm - tissue.wm)
        if name == "tumour":
            return {
                1: wm + 0.8 * bias * (tissue.csf - tissue.wm),  # necrosis: fluid-like
                2: wm + 1.0 * bias * (tissue.gm - tissue.wm),  # solid tumour: grey-matter-like
                3: main,  # oedema
                "local": wm,
            }
        return {1: main, "local": wm}

    # -- the diffusion texture model ---------------------------------------------------------------
    def _texture_model(self, image: Volume, data, fg, params, ctx: RunContext):

        preset = PRESETS[params["preset"]]
        lo, hi = (float(v) for v in np.percentile(data[fg], [1.0, 99.0]))
        scale = (lo, max(hi, lo + 1e-6))
        if params["model_file"]:
            return self._load(params["model_file"], preset, scale, ctx)
        h = hashlib.sha256(np.ascontiguousarray(data).tobytes())
        h.update(np.asarray(image.affine, np.float64).tobytes())
        key = f"{h.hexdigest()}|{params['preset']}|{params['max_steps']}|{ctx.time_budget}"
        cached = _MODEL_CACHE.get(key)
        if cached is not None:
            net = _build(preset).to(ctx.device)
            net.load_state_dict(cached["state"])
            net.eval()
            net.scale = scale
            return net, {"texture_model": dict(cached["info"], reused="this session's model")}
        net, info = self._train(data, fg, preset, params, scale, ctx)
        _MODEL_CACHE.clear()  # one scan's model at a time: they are small, but a session may see many scans
        _MODEL_CACHE[key] = {"state": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
                             "info": info}
        if params["save_model"]:
            info["saved_to"] = self._save(params["save_model"], net, preset, params, info, ctx)
        net.scale = scale
        return net, {"texture_model": info}

    def _train(self, data, fg, preset: Preset, params, scale, ctx: RunContext):
        import torch

        from ..engine import TrainConfig, Trainer, training_limits

        device = torch.device(ctx.device)
        # the model depends on the scan, not on the run's seed: batch variants (seed, seed + 1, ...)
        # share one model, and each variant equals a single run with its seed
        train_seed = int.from_bytes(hashlib.sha256(np.ascontiguousarray(data[::4, ::4, ::4]).tobytes()).digest()[:4],
                                    "little")
        torch.manual_seed(train_seed)
        net = _build(preset).to(device)
        sched = _scheduler()
        lo, hi = scale
        norm = ((data - lo) / (hi - lo) * 2.0 - 1.0).astype(np.float32)
        p = np.minimum(preset.patch, np.asarray(data.shape) // 4 * 4)
        p = np.maximum(p, 4)
        inner = ndimage.binary_erosion(fg, iterations=2) if fg.sum() > 1000 else fg
        cand = np.argwhere(inner)
        rng = np.random.default_rng(train_seed)
        opt = torch.optim.AdamW(net.parameters(), lr=preset.lr)
        steps, budget = training_limits(params["max_steps"], preset.max_steps, preset.train_seconds, ctx.time_budget)
        shape = np.asarray(data.shape)
        zz = [np.arange(int(s), dtype=np.float32) for s in p]
        gz = np.stack(np.meshgrid(*zz, indexing="ij"))

        def batch():
            xs, ms = [], []
            for _ in range(preset.batch):
                c = cand[rng.integers(len(cand))]
                start = np.clip(c - p // 2, 0, shape - p)
                sl = tuple(slice(int(a), int(a + b)) for a, b in zip(start, p))
                x = norm[sl]
                # a random ellipsoidal region, as a lesion's zone would be
                cc = rng.uniform(0.3, 0.7, 3) * p
                rr = rng.uniform(0.15, 0.4, 3) * p
                m = (np.sum(((gz - cc[:, None, None, None]) / rr[:, None, None, None]) ** 2, axis=0) <= 1.0)
                xs.append(x)
                ms.append(m.astype(np.float32))
            x = torch.from_numpy(np.stack(xs)[:, None]).to(device)
            m = torch.from_numpy(np.stack(ms)[:, None]).to(device)
            return x, m

        def step_fn(model, step):
            x, m = batch()
            t = torch.randint(TRAIN_T[0], TRAIN_T[1], (x.shape[0],), device=device)
            noisy = sched.add_noise(x, torch.randn_like(x), t)
            inp = m * noisy + (1 - m) * x
            pred = model(torch.cat([inp, m], dim=1), t)
            return (((pred.float() - x).abs()) * (m + 0.05 * (1 - m))).mean()

        ctx.progress(5, 100, "training the texture model on the scan")
        trainer = Trainer(net, opt, step_fn,
                          TrainConfig(max_steps=steps, time_budget=budget, lr=preset.lr, log_every=25,
                                      amp=ctx.amp), ctx)
        history = trainer.fit()
        net.eval()
        hist = history.to_dict()
        info = {
            "preset": params["preset"],
            "steps": int(hist["steps"]),
            "seconds": round(float(hist["elapsed"]), 1),
            "stopped_by": hist["stop_reason"],
            "final_loss": float(hist["losses"][-1]) if hist["losses"] else None,
            "patch": [int(v) for v in p],
        }
        return net, info

    def _save(self, path, net, preset, params, info, ctx) -> str:
        from ..engine import save_weights

        card = {
            "family": self.id,
            "family_version": self.version,
            "preset": params["preset"],
            "channels": list(preset.channels),
            "trained": info,
            "intended_use": self.intended_use,
            "license": self.license,
        }
        return str(save_weights(path, net.state_dict(), card, overwrite=ctx.overwrite))

    def _load(self, path, preset: Preset, scale, ctx):
        from ..engine import load_weights
        from ..errors import WeightsError

        state, card = load_weights(path, expected_family=self.id)
        chans = tuple(card.get("channels", ()))
        use = next((p for p in PRESETS.values() if p.channels == chans), None)
        if use is None:
            raise WeightsError(f"the texture model's card names channels {chans}, which no preset builds")
        net = _build(use).to(ctx.device)
        try:
            net.load_state_dict(state)
        except RuntimeError as exc:
            raise WeightsError(f"the texture model does not fit this family's network: {exc}") from None
        net.eval()
        net.scale = scale
        return net, {"texture_model": {"loaded_from": str(path), "trained": card.get("trained", {})}}

    def _refine(self, net, scan_box, delta, zone, params, ctx, label) -> np.ndarray:
        """The diffusion edit: (edit of scan + lesion) - (edit of scan), with the same noise: the model's view of the lesion."""
        import torch

        from ..engine import autocast

        sched = _scheduler()
        lo, hi = net.scale
        k = 2 ** (len(net.block_out_channels) - 1)  # the U-Net halves the grid this many times
        shp = np.asarray(scan_box.shape)
        padw = [(0, int(-s % k)) for s in shp]
        base = np.pad((scan_box - lo) / (hi - lo) * 2.0 - 1.0, padw, mode="reflect").astype(np.float32)
        edit = np.pad((scan_box + delta - lo) / (hi - lo) * 2.0 - 1.0, padw, mode="reflect").astype(np.float32)
        m = np.pad(zone.astype(np.float32), padw)
        device = torch.device(ctx.device)
        x = torch.from_numpy(np.stack([base, edit])[:, None]).to(device)
        mt = torch.from_numpy(np.stack([m, m])[:, None]).to(device)
        t0 = int(round(float(params["strength"]) * TRAIN_STEPS))
        t0 = max(1, min(t0, TRAIN_T[1]))
        steps = np.linspace(t0, 0, PRESETS[params["preset"]].ddim_steps + 1).round().astype(int)[:-1]
        gen = torch.Generator(device="cpu").manual_seed(int(ctx.seed) * 1000 + int(label))
        noise = torch.randn((1, *x.shape[1:]), generator=gen).to(device).expand_as(x)
        with torch.no_grad(), autocast(device, enabled=ctx.amp):
            tt = torch.full((2,), int(steps[0]), device=device, dtype=torch.long)
            sample = mt * sched.add_noise(x, noise, tt) + (1 - mt) * x
            pred = x
            for j, tj in enumerate(steps):
                tt = torch.full((2,), int(tj), device=device, dtype=torch.long)
                pred = net(torch.cat([sample, mt], dim=1), tt).float()
                if j + 1 < len(steps):
                    a_t = sched.alphas_cumprod[int(tj)].to(device)
                    a_n = sched.alphas_cumprod[int(steps[j + 1])].to(device)
                    eps = (sample - a_t.sqrt() * pred) / (1 - a_t).sqrt()
                    sample = a_n.sqrt() * pred + (1 - a_n).sqrt() * eps
                    sample = mt * sample + (1 - mt) * x
        pred = pred.cpu().numpy()[:, 0]
        sl = tuple(slice(0, int(s)) for s in shp)
        diff = (pred[1] - pred[0])[sl] * (hi - lo) / 2.0
        return diff.astype(np.float32)


class _LocalLevel:
    """The scan's local mean (Gaussian, 1.5 of the finest voxel size), box by box on demand.

    Linear on purpose: inside a lesion the scan minus this level is the scan's own noise (less
    under 1% of it) plus anatomy finer than the filter; a median filter's residue is a
    high-passed noise of another grain, which a classifier sees.
    """

    def __init__(self, data: np.ndarray, spacing: np.ndarray) -> None:
        self.data = data
        self.sigma = 1.5 * float(np.min(spacing)) / np.asarray(spacing, dtype=float)

    def get(self, box) -> np.ndarray:
        pad = np.ceil(4 * self.sigma).astype(int)
        sl, inner = [], []
        for s, n, p in zip(box, self.data.shape, pad):
            a, b = max(0, s.start - p), min(n, s.stop + p)
            sl.append(slice(a, b))
            inner.append(slice(s.start - a, s.start - a + (s.stop - s.start)))
        smooth = ndimage.gaussian_filter(self.data[tuple(sl)], self.sigma, mode="nearest")
        return smooth[tuple(inner)]
