"""What the normative (generative) anomaly families share: data, training, scoring, calibration.

A normative family learns what normal tissue looks like, reconstructs the scan "as if
healthy" and scores each voxel by how far the scan departs from that reconstruction. The
families differ only in the generative model (:class:`NormativeFamily` subclasses supply the
network, its training loss and its reconstruction); everything else lives here once:

1. **Intensities** are put on one standard scale (Nyul-style piecewise-linear landmarks, the
   2nd..90th percentiles inside the foreground, robust to a lesion of several percent), so a model trained on one site's scans
   applies to later scans of the protocol.
2. **References** (healthy scans of other subjects) are registered to the scan with
   SimpleITK (rigid then affine, mutual information) and resampled onto its grid, so the
   model sees them at the scan's voxel size. A reference whose tissue order disagrees with the
   scan's after alignment (another weighting) is refused.
3. **Training** draws 2D tiles from planes across the slice axis (the coarsest one, or axis 0
   of an isotropic scan), with flips; the model is position-free. Without references it
   trains on the scan itself with a robust (Cauchy) loss, so the few voxels that the model
   cannot explain, a lesion among them, are down-weighted instead of learned as normal.
4. **Score**: the local RMS of the residual scan - reconstruction (Gaussian window in-plane).
5. **Calibration**: the score of normal tissue depends on the tissue and on the local edge
   strength (a cortex border is harder to reconstruct than white matter). The score is turned
   into a z-score per (reconstructed intensity, gradient) bin, with the median and MAD of
   normal tissue's scores in that bin: the references' scores, or the scan's own (robust to a
   small abnormal fraction). The heatmap therefore means the same on every scan.
6. **Candidate regions** come from :mod:`napari_medgen.regions`.

A trained model is saved as safetensors (network + a 4 mm template of the training data for
the contrast check on reuse) with a card holding the calibration, the standard scale,
spacing, contrast check and the references' hashes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from .errors import InputError, WeightsError
from .family import (
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
from .masks import foreground_mask
from .volume import Volume

__all__ = [
    "NormativePreset",
    "NormativeFamily",
    "Calibration",
    "StandardScale",
    "TileSampler",
    "plane_axis",
    "local_rms",
    "template_agreement",
]

#: landmarks of the standard intensity scale (percent inside the foreground). None above the 90th:
#: a large bright lesion (a tumour can fill several percent of the foreground) would move the top
#: percentiles and with them the whole scale; above the last landmark the scale continues linearly.
LANDMARKS = np.array([2.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0])
#: below this rank correlation after alignment, a reference is taken for another contrast
MIN_CONTRAST_AGREEMENT = 0.3
#: the template stored with a saved model (for the contrast check on reuse)
TEMPLATE_MM = 4.0
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class NormativePreset:
    """Network size, tiles and schedule; ``train_seconds`` applies when no time budget is given."""

    channels: tuple[int, ...]
    tile: int
    batch: int
    lr: float
    train_seconds: float
    max_steps: int
    orientations: int  # 1: planes across the slice axis; 3: all three plane orientations averaged
    calib_slices: int  # slices of each reference scored for the calibration
    extra: tuple[tuple[str, Any], ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        return dict(self.extra).get(key, default)


# -- intensities ---------------------------------------------------------------------------------
@dataclass
class StandardScale:
    """Piecewise-linear map of an image's foreground percentiles onto standard landmarks in [0, 1]."""

    landmarks: np.ndarray  # standard values at LANDMARKS percent

    @classmethod
    def from_images(cls, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> "StandardScale":
        rows = []
        for img, m in zip(images, masks):
            q = np.percentile(np.asarray(img)[m], LANDMARKS)
            span = q[-1] - q[0]
            rows.append((q - q[0]) / (span if span > 0 else 1.0))
        return cls(np.mean(rows, axis=0))

    def apply(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        q = np.percentile(np.asarray(image)[mask], LANDMARKS).astype(np.float64)
        if not q[-1] > q[0]:
            raise InputError("the foreground has no intensity contrast (its 2nd and 90th percentiles are equal)")
        q = np.maximum.accumulate(q + np.arange(q.size) * 1e-9 * (q[-1] - q[0]))
        x = np.asarray(image, dtype=np.float32)
        out = np.interp(x, q, self.landmarks).astype(np.float32)
        lo = (self.landmarks[1] - self.landmarks[0]) / (q[1] - q[0])
        hi = (self.landmarks[-1] - self.landmarks[-2]) / (q[-1] - q[-2])
        below, above = x < q[0], x > q[-1]
        out[below] = self.landmarks[0] + (x[below] - q[0]) * lo
        out[above] = self.landmarks[-1] + (x[above] - q[-1]) * hi
        return out


# -- geometry --------------------------------------------------------------------------------------
def plane_axis(spacing: Sequence[float], choice: str = "auto") -> int:
    """The axis the 2D planes are taken across: given, else the coarsest axis, else axis 0."""
    if choice != "auto":
        return int(choice)
    sp = np.asarray(spacing, dtype=float)
    return int(np.argmax(sp)) if sp.max() > 1.2 * sp.min() else 0


def local_rms(residual: np.ndarray, sigma_px: float = 1.0) -> np.ndarray:
    """sqrt of the in-plane Gaussian mean of residual^2, plane by plane (axis 0 = planes)."""
    sq = np.square(residual, dtype=np.float32)
    ndimage.gaussian_filter(sq, sigma=(0.0, sigma_px, sigma_px), output=sq, mode="nearest")
    return np.sqrt(sq, out=sq)


def _gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """In-plane gradient magnitude (axis 0 = planes) of a lightly smoothed copy."""
    return ndimage.gaussian_gradient_magnitude(image, sigma=(1e-6, 1.0, 1.0), mode="nearest").astype(np.float32)


# -- training data -------------------------------------------------------------------------------
class TileSampler:
    """Random 2D tiles of (C, N, H, W) volumes (channels, planes) whose centre lies in the (N, H, W) mask."""

    def __init__(self, volumes: Sequence[np.ndarray], masks: Sequence[np.ndarray], tile: int,
                 rng: np.random.Generator) -> None:
        self.tile = int(tile)
        self.rng = rng
        self.volumes, self.centres = [], []
        half = self.tile // 2
        for vol, mask in zip(volumes, masks):
            pad = [(0, 0), (0, 0), (half, half), (half, half)]
            self.volumes.append(np.pad(np.asarray(vol, dtype=np.float32), pad, mode="reflect"))
            idx = np.flatnonzero(mask)
            if idx.size:
                self.centres.append(idx)
            else:
                self.centres.append(np.flatnonzero(np.ones(mask.shape, dtype=bool)))
        self.shapes = [m.shape for m in masks]
        if not self.volumes:
            raise InputError("no training data")

    def batch(self, n: int) -> np.ndarray:
        out = np.empty((n, self.volumes[0].shape[0], self.tile, self.tile), dtype=np.float32)
        which = self.rng.integers(0, len(self.volumes), n)
        for b in range(n):
            k = int(which[b])
            flat = self.centres[k][self.rng.integers(0, self.centres[k].size)]
            z, y, x = np.unravel_index(flat, self.shapes[k])
            tile = self.volumes[k][:, z, y : y + self.tile, x : x + self.tile]
            if self.rng.random() < 0.5:
                tile = tile[:, :, ::-1]
            if self.rng.random() < 0.5:
                tile = tile[:, ::-1, :]
            out[b] = tile
        return out


# -- calibration -----------------------------------------------------------------------------------
@dataclass
class Calibration:
    """z = (score - median[bin]) / scale[bin], bins of (reconstructed intensity, gradient)."""

    intensity_edges: np.ndarray
    gradient_edges: np.ndarray
    median: np.ndarray  # (n_i, n_g)
    scale: np.ndarray
    source: str = ""

    @classmethod
    def fit(cls, score: np.ndarray, recon: np.ndarray, grad: np.ndarray, source: str,
            n_intensity: int = 10, n_gradient: int = 6, min_count: int = 200) -> "Calibration":
        """Fit from normal tissue's (1D) score, reconstruction and gradient samples."""
        score, recon, grad = (np.asarray(a, dtype=np.float64).ravel() for a in (score, recon, grad))
        if score.size < 1000:
            raise InputError("too little foreground to calibrate the anomaly score (fewer than 1000 voxels)")
        i_edges = np.unique(np.percentile(recon, np.linspace(0, 100, n_intensity + 1)[1:-1]))
        g_edges = np.unique(np.percentile(grad, np.linspace(0, 100, n_gradient + 1)[1:-1]))
        gi = np.searchsorted(i_edges, recon)
        gg = np.searchsorted(g_edges, grad)
        glob_med = float(np.median(score))
        glob_scale = float(np.median(np.abs(score - glob_med))) * _MAD_TO_SIGMA or float(np.std(score)) or 1.0
        med = np.full((i_edges.size + 1, g_edges.size + 1), glob_med)
        scale = np.full_like(med, glob_scale)
        for a in range(med.shape[0]):
            for b in range(med.shape[1]):
                sel = score[(gi == a) & (gg == b)]
                if sel.size >= min_count:
                    m = float(np.median(sel))
                    s = float(np.median(np.abs(sel - m))) * _MAD_TO_SIGMA
                    med[a, b] = m
                    scale[a, b] = max(s, 0.25 * glob_scale)
        return cls(i_edges, g_edges, med, scale, source)

    def apply(self, score: np.ndarray, recon: np.ndarray, grad: np.ndarray) -> np.ndarray:
        gi = np.searchsorted(self.intensity_edges, recon)
        gg = np.searchsorted(self.gradient_edges, grad)
        z = (score - self.median[gi, gg]) / self.scale[gi, gg]
        return z.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Calibration":
        try:
            return cls(*(np.asarray(d[k], dtype=np.float64) for k in
                         ("intensity_edges", "gradient_edges", "median", "scale")), source=str(d.get("source", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"the model card's calibration is unreadable: {exc}") from None


# -- the family --------------------------------------------------------------------------------------
def _template(volume: Volume, data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``data`` (on ``volume``'s grid) downsampled to about TEMPLATE_MM, with the matching affine."""
    sp = np.asarray(volume.spacing)
    step = np.maximum(1, np.round(TEMPLATE_MM / sp)).astype(int)
    smooth = ndimage.gaussian_filter(np.asarray(data, np.float32), sigma=np.maximum(0, (step - 1) / 2.0))
    small = smooth[:: step[0], :: step[1], :: step[2]]
    affine = volume.affine.copy()
    affine[:3, :3] = affine[:3, :3] * step
    return np.ascontiguousarray(small, dtype=np.float32), affine


def _hash(volume: Volume) -> str:
    h = hashlib.sha256()
    arr = np.ascontiguousarray(volume.data)
    h.update(str(arr.dtype).encode() + str(arr.shape).encode())
    h.update(np.asarray(volume.affine, dtype=np.float64).tobytes())
    h.update(memoryview(arr).cast("B"))
    return h.hexdigest()


class NormativeFamily(ModelFamily):
    """Shared run of the normative anomaly families; subclasses supply the generative model.

    Subclasses implement :meth:`build`, :meth:`loss` and :meth:`reconstruct`, and set
    ``PRESETS`` and the descriptive attributes.
    """

    task = Task.ANOMALY
    license = "BSD-3-Clause"
    intended_use = RESEARCH_USE
    wants_gpu = True
    PRESETS: dict[str, NormativePreset] = {}
    short_name = "normative"  # in layer names: "<scan> (VAE anomaly z)"
    score_units = "z-score against normal tissue (same tissue and edge strength)"
    outputs = (
        OutputSpec("heatmap", "heatmap", "anomaly z-score against normal tissue, 0 outside the foreground"),
        OutputSpec("regions", "labels", "candidate regions above the threshold, 1..K by decreasing peak"),
        OutputSpec("reconstruction", "image", "the pseudo-healthy reconstruction (when asked for)"),
    )
    inputs = (
        InputSpec(
            "references",
            required=False,
            min_count=1,
            max_count=10,
            same_grid=False,
            help="Healthy scans of other subjects, same contrast (any grid): the model learns normal tissue "
            "from them. Without references it learns from the scan itself.",
        ),
        InputSpec("mask", required=False, same_grid=True,
                  help="Optional region to score (e.g. a brain mask); default: the automatic foreground."),
    )

    @classmethod
    def common_params(cls, presets: Sequence[str], threshold: float) -> tuple[Param, ...]:
        """The parameters both families share; ``threshold`` is the family's default (see the benchmark)."""
        return (
            Param("preset", "choice", "fast", choices=tuple(presets),
                  help="fast: a few minutes on a CPU; quality: a GPU (larger model, three plane orientations)"),
            Param("threshold", "float", float(threshold), minimum=0.5, maximum=100.0,
                  help="z-score above which a voxel joins a candidate region (the default is the Dice-optimal "
                  "threshold on the benchmark's validation subject; the dock's slider changes it afterwards "
                  "without re-running)"),
            Param("min_region_mm3", "float", 20.0, minimum=0.0, maximum=1e6, label="min region", unit="mm3",
                  help="candidate regions smaller than this are dropped"),
            Param("plane_axis", "choice", "auto", choices=("auto", "0", "1", "2"),
                  help="2D planes are taken across this axis; auto = the coarsest (axis 0 if isotropic)"),
            Param("reconstruction", "bool", False, help="also add the pseudo-healthy reconstruction"),
            training_steps_param(),
            Param("model_file", "str", "", help="reuse a saved normative model (.safetensors) instead of training",
                  path="read", suffixes=(".safetensors", ".json")),
            Param("save_model", "str", "", help="save the trained model here (.safetensors + .json card)",
                  path="write", suffixes=(".safetensors", ".json")),
        )

    # -- what subclasses supply ----------------------------------------------------------------
    def build(self, preset: NormativePreset):  # pragma: no cover - abstract
        raise NotImplementedError

    def loss(self, net, tiles, preset: NormativePreset):  # pragma: no cover - abstract
        """(per-pixel loss map (B, 1, H, W), extra scalar loss or None) of one training batch.

        The caller reduces the map: a plain mean, or a robust (Cauchy) mean when training on
        the scan itself.
        """
        raise NotImplementedError

    def reconstruct(self, net, planes: np.ndarray, preset: NormativePreset, ctx: RunContext,
                    progress: tuple[int, int, int]) -> np.ndarray:  # pragma: no cover - abstract
        """Pseudo-healthy reconstruction (N, H, W) float32 of ``planes`` (N, 2, H, W): the image and its prior."""
        raise NotImplementedError

    # -- the run --------------------------------------------------------------------------------
    def run(self, inputs: Inputs, params: dict[str, Any], ctx: RunContext) -> Result:
        image = inputs.image
        if image.data.ndim != 3 or min(image.shape) < 8:
            raise InputError(f"the anomaly families need a 3D volume at least 8 voxels on each side, got {image.shape}")
        preset_name = params["preset"]
        threshold = float(params["threshold"])
        min_mm3 = float(params["min_region_mm3"])
        axis = plane_axis(image.spacing, params["plane_axis"])
        refs = list(inputs.references or [])
        info: dict[str, Any] = {"plane_axis": axis, "preset": preset_name, "score_units": self.score_units}
        warnings: list[str] = []

        ctx.progress(0, 100, "foreground")
        data = np.asarray(image.data, dtype=np.float32)
        if not np.all(np.isfinite(data)):
            raise InputError("the scan holds NaN or infinite values")
        if inputs.mask is not None:
            fg = np.asarray(inputs.mask.data) != 0
            if not fg.any():
                raise InputError("the mask is empty: it has no non-zero voxel")
        else:
            fg = foreground_mask(data, image.spacing, check=ctx.check_cancelled)
        if fg.sum() < 0.01 * fg.size or fg.sum() < 2000:
            raise InputError(
                f"only {int(fg.sum())} foreground voxels found ({100 * fg.mean():.2f}% of the volume): "
                "the anomaly families need a volume with tissue in it"
            )
        model_card: dict[str, Any] | None = None
        if params["model_file"]:
            from .engine import load_weights

            state, model_card = load_weights(params["model_file"], expected_family=self.id)
            preset = self.PRESETS.get(model_card.get("preset", ""), self.PRESETS[preset_name])
            preset_name = model_card.get("preset", preset_name)
            info["preset"] = preset_name
            scale = StandardScale(np.asarray(model_card["standard_scale"], dtype=np.float64))
            calibration = Calibration.from_dict(model_card["calibration"])
            self._check_reuse(image, data, fg, state, model_card, ctx)
            prior = self._reuse_prior(image, fg, state, model_card, ctx)
            if refs:
                warnings.append("the references were not used: the saved model was reused as it is")
            net = self.build(preset)
            weights = {k[len("net."):]: v for k, v in state.items() if k.startswith("net.")}
            try:
                net.load_state_dict(weights)
            except RuntimeError as exc:
                raise WeightsError(f"the model file does not fit this family's network: {exc}") from None
            net.to(ctx.device).eval()
            info["model_file"] = str(params["model_file"])
            info["training"] = model_card.get("training", {})
            mode = model_card.get("mode", "references")
        else:
            preset = self.PRESETS[preset_name]
            work_refs, ref_masks, ref_info = self._prepare_references(image, data, fg, refs, ctx, warnings)
            mode = "references" if refs else "per-scan"
            scale = StandardScale.from_images(work_refs or [data], ref_masks or [fg])
            if refs:
                std_refs = [np.where(m, scale.apply(r, m), 0.0).astype(np.float32) for r, m in zip(work_refs, ref_masks)]
                del work_refs
                self._flag_unusual_references(std_refs, ref_masks, image.spacing, [r.name for r in refs], warnings)
                train_vols, prior = self._with_priors(std_refs, ref_masks)
                train_masks = ref_masks
                # with 3 or more references the last one is held out: the calibration must see how a
                # subject the model never saw departs from it, as the scan will
                held = 1 if len(refs) >= 3 else 0
                calib_vols, calib_masks = train_vols[len(refs) - held:] or train_vols, train_masks[len(refs) - held:] or train_masks
                train_vols, train_masks = train_vols[: len(refs) - held], train_masks[: len(refs) - held]
                info["calibration_held_out"] = [refs[-1].name] if held else []
            else:
                prior = None
                train_vols = [np.stack([np.where(fg, scale.apply(data, fg), 0.0), np.zeros(data.shape)]).astype(np.float32)]
                train_masks = [fg]
                warnings.append(
                    "trained on this scan alone (no references): the model also learns much of what is abnormal in "
                    "it, and on the project's benchmark this mode finds lesions worse than plain intensity "
                    "thresholding; pick 3 to 5 healthy scans of the same contrast as references for a usable map"
                )
            net, history = self._train(preset, params, train_vols, train_masks, axis, robust=not refs, ctx=ctx)
            info["training"] = history
            info["references"] = ref_info
            calibration = None
        info["mode"] = mode
        info["reference_prior"] = prior is not None
        work = np.stack([np.where(fg, scale.apply(data, fg), 0.0), np.zeros(data.shape) if prior is None else prior])
        work = work.astype(np.float32, copy=False)
        del prior

        # score the scan
        recon, score, grad = self._score(net, work, axis, preset, ctx, (55, 90, 100))
        if calibration is None:
            if refs:
                calibration = self._calibrate_on_references(net, calib_vols, calib_masks, axis, preset, ctx)
                del calib_vols
            else:
                calibration = Calibration.fit(score[fg], recon[fg], grad[fg], source="the scan itself (robust)")
            if params["save_model"]:
                info["saved_model"] = self._save(params, net, preset_name, scale, calibration, image, work, fg,
                                                 mode, info, ctx)
        info["calibration"] = calibration.source
        ctx.progress(92, 100, "calibrating")
        z = calibration.apply(score, recon, grad)
        del score, grad
        heat = np.clip(z, 0.0, None, out=z)
        heat[~fg] = 0.0
        frac = float((heat[fg] > threshold).mean())
        info["foreground_fraction_above_threshold"] = frac
        if frac > 0.05:
            warnings.append(
                f"{100 * frac:.1f}% of the foreground scores above {threshold:g}: the scan is mostly unlike the "
                "normal tissue the model learned (another contrast or protocol, strong artefacts, or widespread "
                "disease); the candidate regions are not meaningful"
            )
        ctx.progress(96, 100, "candidate regions")
        from .regions import label_regions

        labels, regions, n_regions = label_regions(heat, image, threshold, min_mm3)
        base = image.name or "image"
        outputs = [
            Output("heatmap", image.with_data(heat, name=f"{base} ({self.short_name} anomaly z)"), kind="heatmap",
                   description=f"anomaly {self.score_units}"),
            Output("regions", image.with_data(labels, name=f"{base} ({self.short_name} regions)"), kind="labels",
                   description=f"regions with z > {threshold:g} and at least {min_mm3:g} mm3"),
        ]
        if params["reconstruction"]:
            inv = self._unstandardise(recon, data, fg, scale)
            outputs.append(Output("reconstruction", image.with_data(inv, name=f"{base} (pseudo-healthy)"),
                                  kind="image", description="pseudo-healthy reconstruction"))
        info.update(threshold=threshold, min_region_mm3=min_mm3, regions=regions, n_regions=n_regions,
                    foreground_voxels=int(fg.sum()))
        if warnings:
            info["warning"] = "; ".join(warnings)
        ctx.progress(100, 100, "done")
        return Result(outputs, info)

    # -- steps ---------------------------------------------------------------------------------
    def _prepare_references(self, image: Volume, data: np.ndarray, fg: np.ndarray, refs: list[Volume],
                            ctx: RunContext, warnings: list[str]):
        """Register each reference to the scan, check its contrast; returns arrays on the scan's grid."""
        from .registration import align_reference, contrast_agreement

        work, masks, info = [], [], []
        for i, ref in enumerate(refs):
            ctx.progress(1 + 9 * i // max(1, len(refs)), 100, f"registering reference {i + 1}/{len(refs)}")
            rdata = np.asarray(ref.data, dtype=np.float32)
            if rdata.ndim != 3:
                raise InputError(f"reference '{ref.name}' is not a 3D volume (shape {rdata.shape})")
            if not np.all(np.isfinite(rdata)):
                raise InputError(f"reference '{ref.name}' holds NaN or infinite values")
            reg, overlap, r_fg = align_reference(image, ref, fg, ref.name, ctx.check_cancelled, ctx.seed)
            agree = contrast_agreement(data, reg.data, overlap & r_fg, seed=ctx.seed)
            if not agree >= MIN_CONTRAST_AGREEMENT:
                raise InputError(
                    f"reference '{ref.name}' does not look like the same contrast as the scan: after alignment "
                    f"their intensities rank-correlate at {agree:+.2f} (the same weighting gives about +0.6 or more"
                    + ("; the tissue order is reversed, as between T1 and T2" if agree < 0 else "")
                    + "). Use healthy scans of the same weighting and protocol"
                )
            work.append(reg.data)
            masks.append(r_fg)
            info.append({"name": ref.name, "sha256": _hash(ref), "shape": list(ref.shape),
                         "spacing_mm": list(ref.spacing), "mutual_information": reg.metric,
                         "contrast_agreement": agree})
        if len(refs) == 1:
            warnings.append("one reference only: normal variation is estimated from a single subject, "
                            "expect more false candidates than with 3 to 5 references")
        return work, masks, info

    @staticmethod
    def _with_priors(std_refs: list[np.ndarray], masks: list[np.ndarray]):
        """Training volumes (2, Z, Y, X): each reference and, as its prior, the mean of the others.

        The prior channel tells the model what tissue the aligned references show at that place
        (an atlas), so it can tell a lesion from normal anatomy it has not seen in the tile's
        context alone. Each reference is paired with the mean of the *other* references, as the
        scan later is with the mean of all: the model learns how far another subject's anatomy
        departs from the atlas (residual misalignment, other folding), not to copy it. With a
        single reference there is no such pair and the prior channel stays empty.
        Returns (training volumes, the scan's prior or None).
        """
        n = len(std_refs)
        if n < 2:
            return [np.stack([std_refs[0], np.zeros_like(std_refs[0])])], None
        cover = np.sum([m.astype(np.float32) for m in masks], axis=0)
        total = np.sum(std_refs, axis=0)
        vols = []
        for r, m in zip(std_refs, masks):
            others = np.maximum(cover - m, 1.0)
            vols.append(np.stack([r, (total - r) / others]).astype(np.float32))
        prior = (total / np.maximum(cover, 1.0)).astype(np.float32)
        return vols, prior

    def _reuse_prior(self, image: Volume, fg: np.ndarray, state, card, ctx: RunContext) -> np.ndarray | None:
        """The saved model's atlas registered onto this scan (None when the model has no prior)."""
        if not card.get("reference_prior"):
            return None
        from .registration import register

        if "atlas" not in state or "atlas_affine" not in card:
            raise WeightsError("the model card names a reference prior but the file holds no atlas")
        atlas = Volume(state["atlas"].float().numpy(), np.asarray(card["atlas_affine"], dtype=float), "atlas")
        ctx.progress(4, 100, "aligning the saved atlas to the scan")
        reg = register(image, atlas, fg, kind="affine", check_cancelled=ctx.check_cancelled, seed=ctx.seed)
        return reg.data

    def _train(self, preset: NormativePreset, params: dict[str, Any], vols, masks, axis: int, robust: bool,
               ctx: RunContext):
        import torch

        from .engine import TimeCosine, TrainConfig, Trainer, training_limits

        axes = [axis] if preset.orientations == 1 else [0, 1, 2]  # quality: the planes of each axis
        planes = [np.moveaxis(v, a + 1, 1) for v in vols for a in axes]
        pmasks = [np.moveaxis(m, a, 0) for m in masks for a in axes]
        sampler = TileSampler(planes, pmasks, preset.tile, ctx.rng)
        net = self.build(preset)
        max_steps, budget = training_limits(params["max_steps"], preset.max_steps, preset.train_seconds,
                                            ctx.time_budget)
        optimizer = torch.optim.AdamW(net.parameters(), lr=preset.lr, weight_decay=1e-4)
        schedule = TimeCosine(optimizer, preset.lr, budget, max_steps)
        device = torch.device(ctx.device)
        state = {"scale": None}

        def step_fn(model, step):
            tiles = torch.from_numpy(sampler.batch(preset.batch)).to(device)
            per_pixel, extra = self.loss(model, tiles, preset)
            extra = 0.0 if extra is None else extra
            if robust:  # Cauchy loss around a running scale of the residual: outliers get bounded weight
                with torch.no_grad():
                    s = float(per_pixel.detach().float().median()) * 3.0 + 1e-6
                    state["scale"] = s if state["scale"] is None else 0.98 * state["scale"] + 0.02 * s
                c = state["scale"]
                return (c * torch.log1p(per_pixel / c)).mean() + extra
            return per_pixel.mean() + extra

        ctx.progress(10, 100, "training")
        trainer = Trainer(net, optimizer, step_fn,
                          TrainConfig(max_steps=max_steps, time_budget=budget, lr=preset.lr, log_every=25,
                                      grad_clip=1.0), _Sub(ctx, 10, 55), scheduler=schedule)
        history = trainer.fit()
        net.eval()
        return net, {
            "steps": history.steps,
            "seconds": round(history.elapsed, 1),
            "stop_reason": history.stop_reason,
            "final_loss": history.losses[-1] if history.losses else None,
            "robust_loss": robust,
        }

    def _score_planes(self, net, planes: np.ndarray, preset: NormativePreset, ctx: RunContext,
                      progress: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(reconstruction, residual score), each (N, H, W), of planes (C, N, H, W): image, prior."""
        planes = np.ascontiguousarray(np.moveaxis(planes, 0, 1), dtype=np.float32)  # (N, C, H, W)
        recon = self.reconstruct(net, planes, preset, ctx, progress)
        return recon, local_rms(planes[:, 0] - recon)

    def _score(self, net, work: np.ndarray, axis: int, preset: NormativePreset, ctx: RunContext,
               progress: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Reconstruction, residual score and gradient of ``work`` (2, Z, Y, X: image, prior), orientations averaged."""
        axes = [axis] if preset.orientations == 1 else [axis] + [a for a in range(3) if a != axis]
        recon = np.zeros(work.shape[1:], dtype=np.float32)
        score = np.zeros(work.shape[1:], dtype=np.float32)
        start, stop, total = progress
        for k, a in enumerate(axes):
            sub = (start + (stop - start) * k // len(axes), start + (stop - start) * (k + 1) // len(axes), total)
            r, s = self._score_planes(net, np.moveaxis(work, a + 1, 1), preset, ctx, sub)
            recon += np.moveaxis(r, 0, a)
            score += np.moveaxis(s, 0, a)
        recon /= len(axes)
        score /= len(axes)
        grad = np.moveaxis(_gradient_magnitude(np.moveaxis(recon, axis, 0)), 0, axis)
        return recon, score, grad

    def _calibrate_on_references(self, net, vols, masks, axis, preset, ctx) -> Calibration:
        """Fit the calibration on the scores of (held-out) references.

        With one plane orientation, a spread of planes of each reference (``calib_slices`` x 3
        in all); with three (the quality preset, meant for a GPU) each whole reference, scored
        as the scan is.
        """
        per_ref = []
        n_planes = max(1, 3 * preset.calib_slices // len(vols))
        for i, (vol, mask) in enumerate(zip(vols, masks)):
            sub = (90 + 2 * i // len(vols), 90 + 2 * (i + 1) // len(vols), 100)
            if preset.orientations == 1:
                pmask = np.moveaxis(mask, axis, 0)
                filled = np.flatnonzero(pmask.reshape(pmask.shape[0], -1).mean(1) > 0.05)
                if filled.size == 0:
                    filled = np.arange(pmask.shape[0])
                pick = np.unique(filled[np.linspace(0, filled.size - 1, min(filled.size, n_planes))
                                        .round().astype(int)])
                r, s = self._score_planes(net, np.moveaxis(vol, axis + 1, 1)[:, pick], preset, ctx, sub)
                g = _gradient_magnitude(r)
                m = pmask[pick]
            else:
                r, s, g = self._score(net, vol, axis, preset, ctx, sub)
                m = mask
            per_ref.append((s[m], r[m], g[m]))
        return Calibration.fit(*(np.concatenate([smp[j] for smp in per_ref]) for j in range(3)),
                               source=f"{len(vols)} reference scan(s) the model did not train on"
                               if len(vols) == 1 else f"{len(vols)} reference scan(s)")

    @staticmethod
    def _flag_unusual_references(std_refs, masks, spacing, names, warnings) -> None:
        """Warn about a reference with a compact region unlike all the others (a lesion, an artefact).

        Each reference is compared voxel by voxel with the others (z-score against their mean
        and spread); a connected region above z = 5 much larger than the other references'
        largest such region is reported.
        """
        n = len(std_refs)
        if n < 3:
            return
        stack = np.stack(std_refs)
        voxel = float(np.prod(spacing))
        largest = []
        for i in range(n):
            others = np.delete(stack, i, axis=0)
            sd = others.std(axis=0)
            floor = float(np.median(sd[masks[i]])) if masks[i].any() else 1.0
            z = np.abs(stack[i] - others.mean(axis=0)) / np.maximum(sd, floor)
            lab, k = ndimage.label((z > 5) & masks[i])
            largest.append(float(np.bincount(lab.ravel())[1:].max()) * voxel if k else 0.0)
        typical = float(np.median(largest))
        for name, big in zip(names, largest):
            if big >= max(50.0, 3 * typical):
                warnings.append(
                    f"reference '{name}' has a {big:.0f} mm3 region unlike all other references (theirs: about "
                    f"{typical:.0f} mm3 at most): it may hold a lesion or artefact; a normative model should learn "
                    "from healthy scans only"
                )

    @staticmethod
    def _unstandardise(recon: np.ndarray, data: np.ndarray, fg: np.ndarray, scale: StandardScale) -> np.ndarray:
        q = np.percentile(data[fg], LANDMARKS)
        return np.interp(recon, scale.landmarks, q, left=None, right=None).astype(np.float32)

    # -- save / reuse ------------------------------------------------------------------------------
    def _save(self, params, net, preset_name, scale, calibration, image, work, fg, mode, info, ctx) -> str:
        import torch

        from .engine import save_weights

        tmpl, tmpl_affine = _template(image, np.where(fg, work[0], 0.0))
        state = {f"net.{k}": v for k, v in net.state_dict().items()}
        state["template"] = torch.from_numpy(tmpl)
        if info.get("reference_prior"):  # the atlas, on this scan's grid, for later scans
            state["atlas"] = torch.from_numpy(np.ascontiguousarray(work[1])).to(torch.float16)
        card = {
            "family": self.id,
            "family_version": self.version,
            "preset": preset_name,
            "mode": mode,
            "standard_scale": scale.landmarks.tolist(),
            "calibration": calibration.to_dict(),
            "spacing_mm": list(image.spacing),
            "plane_axis": info["plane_axis"],
            "template_affine": tmpl_affine.tolist(),
            "reference_prior": bool(info.get("reference_prior")),
            "atlas_affine": image.affine.tolist() if info.get("reference_prior") else None,
            "trained_on": image.name,
            "scan_sha256": _hash(image) if mode == "per-scan" else None,
            "references": info.get("references", []),
            "contrast_check": f"rank correlation with the template >= {MIN_CONTRAST_AGREEMENT}",
            "training": info.get("training", {}),
            "intended_use": self.intended_use,
            "license": self.license,
        }
        return str(save_weights(params["save_model"], state, card, overwrite=ctx.overwrite))

    def _check_reuse(self, image: Volume, data: np.ndarray, fg: np.ndarray, state, card, ctx: RunContext) -> None:
        """Refuse a saved model for another voxel size or another contrast than the scan's."""
        for key in ("standard_scale", "calibration", "template_affine", "spacing_mm"):
            if key not in card:
                raise WeightsError(f"the model card lacks '{key}'; it was not saved by this family")
        sp_model = np.sort(np.asarray(card["spacing_mm"], dtype=float))
        sp_scan = np.sort(np.asarray(image.spacing, dtype=float))
        if np.any(np.abs(sp_scan[:2] - sp_model[:2]) > 0.25 * sp_model[:2]):
            raise InputError(
                f"the saved model was trained at {', '.join(f'{v:.2g}' for v in card['spacing_mm'])} mm voxels, "
                f"this scan has {', '.join(f'{v:.2g}' for v in image.spacing)} mm: train a model for this protocol"
            )
        if "template" not in state:
            raise WeightsError("the model file lacks its template; it was not saved by this family")
        template = Volume(state["template"].numpy().astype(np.float32), np.asarray(card["template_affine"]), "template")
        agree = template_agreement(image, data, fg, template, ctx)
        if not agree >= MIN_CONTRAST_AGREEMENT:
            raise InputError(
                f"the saved model was trained on another contrast than this scan's: after alignment its template "
                f"and the scan rank-correlate at {agree:+.2f}. Train a model on healthy scans of this weighting"
            )


def template_agreement(image: Volume, data: np.ndarray, fg: np.ndarray, template: Volume, ctx: RunContext) -> float:
    """Rank correlation of a saved model's 4 mm template with the scan after an affine alignment.

    A saved model is refused for a scan of another weighting than the one it was trained on;
    the correlation is taken inside the foreground (about 8 mm in), away from the border and the
    skull, where any two heads correlate whatever their weighting.
    """
    from .registration import contrast_agreement, register

    small, small_affine = _template(image, np.where(fg, data, 0.0))
    scan_small = Volume(small, small_affine, "scan")
    small_fg = small > np.percentile(small[small > 0], 20) if (small > 0).any() else small > 0
    for depth in (2, 1):
        inner = ndimage.binary_erosion(small_fg, iterations=depth)
        if inner.sum() >= 50:
            small_fg = inner
            break
    ctx.progress(2, 100, "checking the saved model's contrast against the scan")
    reg = register(scan_small, template, small_fg, kind="affine", check_cancelled=ctx.check_cancelled,
                   sampling=0.5, seed=ctx.seed, shrink=(2, 1))
    return contrast_agreement(small, reg.data, small_fg & reg.inside & (reg.data > 0), seed=ctx.seed, sigma=0.0)


class _Sub:
    """A RunContext whose progress maps 0..total onto a slice of the run's bar."""

    def __init__(self, ctx: RunContext, start: int, stop: int) -> None:
        self._ctx, self._start, self._stop = ctx, start, stop

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def progress(self, done: int, total: int, message: str = "") -> None:
        frac = done / max(total, 1)
        self._ctx.progress(int(self._start + (self._stop - self._start) * frac), 100, message)
