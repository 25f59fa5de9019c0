"""Self-supervised super-resolution of thick-slice scans (SMORE class), trained on the scan itself.

The in-plane slices of a thick-slice scan are sharp; only the through-plane axis is blurred
by the slice profile and undersampled. Following SMORE (Zhao et al., IEEE TMI 2020) and
ECLARE (Remedios et al., 2025), training pairs come from the scan's own in-plane slices:
one in-plane axis is blurred with the slice profile (Gaussian, FWHM = slice thickness, by default
estimated from the scan itself: :func:`~napari_medgen.acquisition.estimate_slice_profile`),
sampled at the slice spacing with a random phase (so any, also non-integer, factor works)
and brought back to the fine grid with the same cubic B-spline that later upsamples the
real slices. A 2D MONAI U-Net learns the residual that restores the detail. At inference the
volume is B-spline upsampled along the slice axis and every through-plane slice, in two
orientations (slice axis x each in-plane axis), is restored; the two are averaged. Where the
output lies beyond the first or last slice centre (extrapolation, which training never shows the
network) it is the interpolation. If the network loses a held-out check against B-spline
interpolation, the output is the interpolation, named and recorded as a fallback.

The whole volume is never on the GPU: slices travel in small batches through the engine's
sliding-window inferer and are stitched on the CPU, so memory grows with the volume only on
the host (about four output-sized float32 arrays).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from ..acquisition import SliceProfile, estimate_slice_profile
from ..errors import InputError, ParamError, WeightsError
from ..family import (
    AUTO,
    RESEARCH_USE,
    Inputs,
    ModelFamily,
    Output,
    Param,
    Result,
    RunContext,
    Task,
    training_steps_param,
)
from ..volume import PLANES, Volume, parse_target_spacing, resample_geometry, slice_planes

__all__ = ["SelfSupervisedSR", "PRESETS", "bspline_resample_axis0", "degrade_axis0", "find_slice_axis"]

FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


@dataclass(frozen=True)
class Preset:
    """Network size and training schedule; ``train_seconds`` applies when no time budget is given."""

    channels: tuple[int, ...]
    res_units: int
    patch: int
    batch: int
    lr: float
    train_seconds: float
    max_steps: int
    flips: bool  # test-time flips (4 passes per orientation instead of 1)


PRESETS: dict[str, Preset] = {
    # ~3 minutes of training on 2 CPU cores; a few minutes in all for a 256 x 256 x 40 scan
    "fast": Preset(channels=(16, 32, 64, 128), res_units=1, patch=64, batch=16, lr=2e-3,
                   train_seconds=180.0, max_steps=100_000, flips=False),
    # for a GPU (or a long CPU budget): a wider net, larger patches, flip averaging
    "quality": Preset(channels=(32, 64, 128, 256), res_units=2, patch=96, batch=16, lr=1e-3,
                      train_seconds=1800.0, max_steps=1_000_000, flips=True),
}


# -- the degradation model, shared by training and inference ---------------------------------
#: edge slices repeated on each side before the spline prefilter (its boundary effect fades within them)
_EDGE_PAD = 4


def bspline_resample_axis0(arr: np.ndarray, t: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Cubic B-spline interpolation of ``arr`` along axis 0 at fractional indices ``t``.

    Evaluated slice by slice (memory: the coefficients plus the output). The same function
    upsamples training patches and the real scan, so the network sees identical artefacts.
    Beyond the first and last slice the edge slice is repeated (as ``map_coordinates`` with
    ``mode="nearest"`` and classic.cubic do): a mirrored continuation would invent anatomy
    where a cropped field of view cuts through it.
    """
    arr = np.asarray(arr, dtype=np.float32)
    pad = _EDGE_PAD if arr.shape[0] > 1 else 0
    if pad:
        arr = np.concatenate([np.repeat(arr[:1], pad, axis=0), arr, np.repeat(arr[-1:], pad, axis=0)])
    n = arr.shape[0]
    coeffs = ndimage.spline_filter1d(arr, order=3, axis=0, mode="mirror", output=np.float32) if n > 1 else arr
    t = np.asarray(t, dtype=np.float64) + pad
    i0 = np.floor(t).astype(np.int64)
    f = (t - i0).astype(np.float32)
    w = np.stack(
        [(1 - f) ** 3 / 6, (3 * f**3 - 6 * f**2 + 4) / 6, (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6, f**3 / 6]
    )
    idx = np.stack([np.clip(i0 + k, 0, n - 1) for k in (-1, 0, 1, 2)])
    if out is None:
        out = np.empty((len(t),) + arr.shape[1:], dtype=np.float32)
    if arr.ndim == 1 or out[0].size < 4096:  # small arrays (training patches): vectorised
        out[...] = np.einsum("kj,kj...->j...", w, coeffs[idx])
        return out
    for j in range(len(t)):
        a, b, c, d = idx[:, j]
        np.multiply(coeffs[a], w[0, j], out=out[j])
        out[j] += w[1, j] * coeffs[b]
        out[j] += w[2, j] * coeffs[c]
        out[j] += w[3, j] * coeffs[d]
    return out


def degrade_axis0(hr: np.ndarray, ratio: float, sigma: float, phase: float) -> np.ndarray:
    """Simulate the acquisition along axis 0 and upsample back to the fine grid.

    Blur with a Gaussian slice profile (``sigma`` in fine voxels), sample every ``ratio``
    fine voxels starting at ``phase``, then B-spline back onto the fine grid.
    """
    blurred = ndimage.gaussian_filter1d(hr, sigma, axis=0, mode="reflect") if sigma > 0 else hr
    n = hr.shape[0]
    pos = np.arange(phase, n - 1 + 1e-6, ratio)
    low = ndimage.map_coordinates(
        blurred, np.meshgrid(pos, np.arange(hr.shape[1]), indexing="ij"), order=1, mode="reflect"
    ).astype(np.float32)
    return bspline_resample_axis0(low, (np.arange(n) - phase) / ratio)


def find_slice_axis(spacing: tuple[float, ...], choice: str, planes: Sequence[str] = PLANES) -> int:
    """The array axis across the thick slices: the coarsest one, or the one of the user's slice orientation.

    ``choice`` is "auto", a plane name of ``planes`` (the name of the slices perpendicular
    to each array axis, see :func:`~napari_medgen.volume.slice_planes`) or an array axis "0"-"2".
    """
    sp = np.asarray(spacing, dtype=float)
    planes = list(planes)
    coarsest = int(np.argmax(sp))
    if choice == "auto":
        axis = coarsest
    elif choice in planes:
        axis = planes.index(choice)
    elif choice in ("0", "1", "2"):
        axis = int(choice)
    else:
        raise ParamError(f"slice orientation must be auto, {', '.join(planes)}; got {choice!r}")

    def thick(a: int) -> bool:
        return bool(sp[a] >= 1.05 * np.delete(sp, a).min())

    if not thick(axis):
        spacing_text = " x ".join(f"{v:.3g}" for v in sp)
        if choice != "auto" and thick(coarsest):
            raise InputError(
                f"the {planes[axis]} slices (napari axis {axis}, {sp[axis]:.3g} mm apart) are not the thick ones: "
                f"this scan's thick slices are {planes[coarsest]} ({sp[coarsest]:.3g} mm apart, napari axis "
                f"{coarsest}); choose 'auto' or '{planes[coarsest]}'"
            )
        raise InputError(
            f"the spacing {spacing_text} mm is (near-)isotropic: no axis is coarser than the others, so there are "
            "no thick slices to super-resolve (a classic resampler changes the spacing)"
        )
    return axis


# -- the network ---------------------------------------------------------------------------------
def build_network(preset: Preset):
    """A 2D MONAI U-Net predicting the residual over the B-spline upsampled input."""
    import torch
    from monai.networks.nets import UNet

    class ResidualUNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = UNet(
                spatial_dims=2,
                in_channels=1,
                out_channels=1,
                channels=preset.channels,
                strides=(2,) * (len(preset.channels) - 1),
                num_res_units=preset.res_units,
                norm=None,
                act="PRELU",
            )

        def forward(self, x):
            return x + self.net(x)

    return ResidualUNet()


#: the smallest training patch (the U-Net halves it three times)
_MIN_PATCH = 32


class _PatchSampler:
    """Random training pairs from the in-plane slices of the (normalised) scan."""

    def __init__(self, volume: np.ndarray, inplane_spacing: tuple[float, float], slice_spacing: float,
                 thickness: float, patch: int, rng: np.random.Generator) -> None:
        self.vol = volume  # (slices, rows, cols), slice axis first
        self.rng = rng
        # per in-plane axis: fine-grid ratio to the slice spacing and the profile's sigma in fine voxels
        self.ratio = [slice_spacing / s for s in inplane_spacing]
        self.sigma = [thickness / s / FWHM_PER_SIGMA for s in inplane_spacing]
        self.margin = [int(math.ceil(3 * g + 2 * r + 4)) for g, r in zip(self.sigma, self.ratio)]
        fg = volume > 0.1
        weights = fg.reshape(fg.shape[0], -1).mean(axis=1) + 1e-3
        self.slice_p = weights / weights.sum()
        axes = [0, 1] if max(inplane_spacing) / min(inplane_spacing) < 1.1 else [0]
        # a small field of view: smaller patches of real anatomy rather than patches padded with its
        # mirror image (the degraded axis needs the patch plus a margin on both sides)
        fits = {a: self._fits(a, patch) for a in axes}
        self.axes = [a for a in axes if fits[a] >= _MIN_PATCH] or axes
        self.patch = max(_MIN_PATCH, min([patch] + [fits[a] for a in self.axes]))

    def _fits(self, axis: int, patch: int) -> int:
        """The largest patch (a multiple of 8, at most ``patch``) the slices hold when ``axis`` is degraded."""
        rows, cols = self.vol.shape[1 + axis], self.vol.shape[2 - axis]
        return int(min(patch, rows - 2 * self.margin[axis], cols) // 8 * 8)

    def pair(self) -> tuple[np.ndarray, np.ndarray]:
        rng, p = self.rng, self.patch
        k = int(rng.choice(len(self.slice_p), p=self.slice_p))
        img = self.vol[k]
        axis = int(rng.choice(self.axes))
        if axis == 1:
            img = img.T
        ratio, sigma, margin = self.ratio[axis], self.sigma[axis], self.margin[axis]
        need = (p + 2 * margin, p)
        if img.shape[0] < need[0] or img.shape[1] < need[1]:
            img = np.pad(img, [(0, max(0, need[0] - img.shape[0])), (0, max(0, need[1] - img.shape[1]))], mode="reflect")
        for _ in range(10):  # prefer patches with tissue in them
            r0 = int(rng.integers(0, img.shape[0] - need[0] + 1))
            c0 = int(rng.integers(0, img.shape[1] - need[1] + 1))
            crop = img[r0 : r0 + need[0], c0 : c0 + need[1]]
            if crop[margin:-margin].mean() > 0.05:
                break
        if rng.random() < 0.5:
            crop = crop[::-1]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        crop = np.ascontiguousarray(crop, dtype=np.float32)
        low = degrade_axis0(crop, ratio, sigma, float(rng.uniform(0, ratio)))
        return low[margin : margin + p], crop[margin : margin + p]

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        pairs = [self.pair() for _ in range(n)]
        x = np.stack([a for a, _ in pairs])[:, None]
        y = np.stack([b for _, b in pairs])[:, None]
        return x, y


class SelfSupervisedSR(ModelFamily):
    """Thick-slice to near-isotropic, learned from the scan's own in-plane detail."""

    id = "medgen.selfsr"
    task = Task.SUPERRES
    display_name = "Self-supervised SR (SMORE-style U-Net)"
    version = "0.1.0"
    description = (
        "Learns through-plane detail from the scan's own in-plane slices (degraded with the slice profile), "
        "then restores the B-spline upsampled volume in two through-plane orientations. 'fast' trains ~3 min "
        "on a CPU; 'quality' is for a GPU. The time budget bounds training."
    )
    citation = (
        "Zhao C, Dewey BE, Pham DL, Calabresi PA, Reich DS, Prince JL. SMORE: a self-supervised anti-aliasing and "
        "super-resolution algorithm for MRI using deep learning. IEEE TMI 40(3), 2021. Remedios SW et al. "
        "ECLARE: efficient cross-planar learning for anisotropic resolution enhancement, 2025."
    )
    license = "BSD-3-Clause"
    intended_use = RESEARCH_USE
    wants_gpu = True
    trains = True  # a network trained on the scan itself
    priority = 10
    params = (
        Param("preset", "choice", "fast", choices=tuple(PRESETS), help="fast: ~3 min of CPU training; quality: GPU"),
        Param("target_spacing", "str", "auto", unit="mm",
              help="'auto' = isotropic at the finest in-plane spacing; one number or 'z,y,x'"),
        Param("slice_axis", "choice", "auto", choices=("auto", *PLANES), label="thick slices",
              help="orientation of the thick slices, read from the scan's orientation; auto = the coarsest spacing"),
        Param("slice_thickness", "float", AUTO, minimum=0.1, maximum=50.0, unit="mm",
              auto="estimated from the scan (its in-plane detail, blurred and sampled like the slices, is matched "
                   "to the through-plane detail)",
              help="FWHM of the slice profile (gap = slice spacing - thickness). Untick auto to give it, e.g. from "
                   "the protocol; DICOM SliceThickness is often missing or wrong"),
        training_steps_param("the preset's training time (fast: 3 minutes)"),
        Param("model_file", "str", "", help="reuse a saved model (.safetensors) instead of training",
              path="read", suffixes=(".safetensors", ".json")),
        Param("save_model", "str", "", help="save the trained model here (.safetensors + .json card)",
              path="write", suffixes=(".safetensors", ".json")),
    )

    # -- run -------------------------------------------------------------------------------------
    def run(self, inputs: Inputs, params: dict[str, Any], ctx: RunContext) -> Result:
        import torch

        from ..engine import TimeCosine, TrainConfig, Trainer, load_weights, save_weights, training_limits

        image = inputs.image
        preset = PRESETS[params["preset"]]
        spacing = np.asarray(image.spacing, dtype=float)
        planes = slice_planes(image.affine)
        axis = find_slice_axis(tuple(spacing), params["slice_axis"], planes)
        inplane_axes = [a for a in range(3) if a != axis]
        inplane_sp = (float(spacing[inplane_axes[0]]), float(spacing[inplane_axes[1]]))
        fine = min(inplane_sp)
        s_slice = float(spacing[axis])
        if params["slice_thickness"] != AUTO and float(params["slice_thickness"]) > 3 * s_slice:
            raise ParamError(f"a slice thickness of {float(params['slice_thickness']):g} mm is implausible for "
                             f"slices {s_slice:g} mm apart (at most 3 x the spacing)")
        target = np.asarray(parse_target_spacing(params["target_spacing"], spacing, auto=fine))

        data = np.asarray(image.data, dtype=np.float32)
        lo, hi = (float(v) for v in np.percentile(data, [0.5, 99.5]))
        if hi <= lo:
            hi = lo + float(np.ptp(data)) or lo + 1.0
        work = np.moveaxis((data - lo) / (hi - lo), axis, 0).astype(np.float32)  # slice axis first
        ctx.check_cancelled()
        profile = slice_profile_of(work, s_slice, inplane_sp, params["slice_thickness"], ctx)
        profile = replace(profile, axis=axis)
        thickness = profile.fwhm_mm
        ctx.progress(0, 1, f"slice profile: FWHM {thickness:.2f} mm ({profile.source}), slices {s_slice:.3g} mm apart")

        model = build_network(preset)
        info: dict[str, Any] = {
            "slice_axis": axis,
            "slice_orientation": planes[axis],
            "slice_spacing_mm": s_slice,
            "slice_thickness_mm": thickness,
            "slice_profile": profile.record(),
            "gap_mm": profile.gap_mm,
            "inplane_spacing_mm": list(inplane_sp),
            "scale_factor": s_slice / fine,
            "preset": params["preset"],
        }
        # held-out in-plane pairs (own seed): after training the network must beat B-spline on them
        val_sampler = _PatchSampler(work, inplane_sp, s_slice, thickness, 64, np.random.default_rng(ctx.seed + 7919))
        val_x, val_y = val_sampler.batch(48)
        if params["model_file"]:
            state, card = load_weights(params["model_file"], expected_family=self.id)
            if card.get("preset") != params["preset"]:
                preset = PRESETS[card.get("preset", "fast")]
                model = build_network(preset)
            try:
                model.load_state_dict(state)
            except RuntimeError as exc:
                raise WeightsError(f"the model file does not fit this family's network: {exc}") from None
            model.to(ctx.device).eval()
            expected = card.get("scale_factor")
            if expected and abs(expected - s_slice / fine) > 0.15 * expected:
                raise InputError(
                    f"the saved model was trained for a {expected:.2f}x slice factor, this scan needs "
                    f"{s_slice / fine:.2f}x; train a new model for this protocol"
                )
            info["model_file"] = str(params["model_file"])
            info["training"] = card.get("training", {})
        else:
            sampler = _PatchSampler(work, inplane_sp, s_slice, thickness, preset.patch, ctx.rng)
            max_steps, budget = training_limits(params["max_steps"], preset.max_steps, preset.train_seconds,
                                                ctx.time_budget)
            optimizer = torch.optim.AdamW(model.parameters(), lr=preset.lr, weight_decay=1e-4)
            schedule = TimeCosine(optimizer, preset.lr, budget, max_steps)
            device = torch.device(ctx.device)

            def step_fn(net, step):
                x, y = sampler.batch(preset.batch)
                x = torch.from_numpy(x).to(device)
                y = torch.from_numpy(y).to(device)
                return torch.nn.functional.l1_loss(net(x), y)

            trainer = Trainer(
                model,
                optimizer,
                step_fn,
                TrainConfig(max_steps=max_steps, time_budget=budget, lr=preset.lr, log_every=25, grad_clip=1.0),
                ctx,
                scheduler=schedule,
            )
            history = trainer.fit()
            info["training"] = {
                "steps": history.steps,
                "seconds": round(history.elapsed, 1),
                "stop_reason": history.stop_reason,
                "final_loss": history.losses[-1] if history.losses else None,
                "loss_curve": list(zip(history.loss_steps, history.losses)),
            }
            if params["save_model"]:
                card = {
                    "family": self.id,
                    "family_version": self.version,
                    "preset": params["preset"],
                    "scale_factor": s_slice / fine,
                    "slice_thickness_mm": thickness,
                    "slice_spacing_mm": s_slice,
                    "inplane_spacing_mm": list(inplane_sp),
                    "trained_on": image.name,
                    "training": {k: v for k, v in info["training"].items() if k != "loss_curve"},
                    "intended_use": self.intended_use,
                    "license": self.license,
                }
                info["saved_model"] = str(
                    save_weights(params["save_model"], model.state_dict(), card, overwrite=ctx.overwrite)
                )

        net_l1, base_l1 = self._validate(model, val_x, val_y, ctx)
        info["validation"] = {"l1_network": net_l1, "l1_bspline": base_l1, "patches": int(len(val_x))}
        use_network = net_l1 < base_l1
        name = f"{image.name} (SR {params['preset']})"
        if not use_network:
            steps = info.get("training", {}).get("steps")
            info["fallback"] = "B-spline interpolation (the trained network was worse on held-out patches)"
            info["warning"] = (
                f"super-resolution fell back to B-spline interpolation: the trained network was worse than it on "
                f"held-out in-plane patches (mean error {net_l1:.4f} against {base_l1:.4f}"
                + (f", after {steps} training steps" if steps is not None else "")
                + "). The result is plain interpolation, named so. Give training more time or steps, or check the "
                "slice thickness."
            )
            name = f"{image.name} (B-spline, SR fallback)"
        restored, affine = self._infer(model if use_network else None, work, image, axis, fine, preset, ctx)
        restored = restored * (hi - lo) + lo
        out = Volume(restored, affine, name=name, metadata=dict(image.metadata))
        if not np.allclose(out.spacing, target, rtol=1e-4):
            out = self._resample_to(out, target, ctx)
        out.data = np.clip(out.data, float(data.min()), float(data.max()), out=out.data)
        return Result([Output("image", out)], info)

    @staticmethod
    def _validate(model, x: np.ndarray, y: np.ndarray, ctx: RunContext) -> tuple[float, float]:
        """Mean L1 of the network and of the B-spline input against the truth of held-out pairs."""
        import torch

        with torch.inference_mode():
            pred = model.eval()(torch.from_numpy(x).to(ctx.device)).float().cpu().numpy()
        return float(np.abs(pred - y).mean()), float(np.abs(x - y).mean())

    # -- inference -------------------------------------------------------------------------------
    def _infer(self, model, work: np.ndarray, image: Volume, axis: int, fine: float, preset: Preset,
               ctx: RunContext) -> tuple[np.ndarray, np.ndarray]:
        """B-spline upsample the slice axis to ``fine`` mm, restore it in two orientations, average.

        ``model=None`` returns the B-spline upsampled volume (the fallback when training failed).
        """
        import torch

        from ..engine import sliding_window

        sp = np.asarray(image.spacing, dtype=float)
        sr_sp = sp.copy()
        sr_sp[axis] = fine
        shape, affine = resample_geometry(image, sr_sp)
        # fractional index along the slice axis of every output slice
        mapping = np.linalg.inv(image.affine) @ affine
        t = mapping[axis, axis] * np.arange(shape[axis]) + mapping[axis, 3]
        up = bspline_resample_axis0(work, t)  # (n_out, rows, cols), slice axis first
        if model is None:
            return np.moveaxis(up, 0, axis), affine
        acc = np.zeros_like(up)
        n_rows, n_cols = up.shape[1], up.shape[2]
        flips = [(False,), (True,)] if preset.flips else [(False,)]
        passes = len(flips) * (n_rows + n_cols)
        done = 0
        chunk = 8
        slice_win = min(256, _ceil8(up.shape[0]))  # window length along the slice axis
        net = model.eval()

        class _Quiet:  # the engine's per-window progress is folded into ours (slices done)
            device = ctx.device
            amp = ctx.amp

            @staticmethod
            def check_cancelled():
                ctx.check_cancelled()

            @staticmethod
            def progress(d, t, m):
                ctx.check_cancelled()

        def predictor(x):
            return net(x)

        with torch.inference_mode():
            for (flip,) in flips:
                for orient in (2, 1):  # planes (slice, rows) for each column, then (slice, cols) for each row
                    n = n_cols if orient == 2 else n_rows
                    other = n_rows if orient == 2 else n_cols
                    win = (slice_win, min(256, _ceil8(other)))
                    for start in range(0, n, chunk):
                        stop = min(n, start + chunk)
                        if orient == 2:
                            planes = np.moveaxis(up[:, :, start:stop], 2, 0)  # (k, slice, rows)
                        else:
                            planes = np.moveaxis(up[:, start:stop, :], 1, 0)  # (k, slice, cols)
                        if flip:
                            planes = planes[:, :, ::-1]
                        batch = np.ascontiguousarray(planes)[:, None]
                        # a window longer than the planes is padded by repeating their edge: anatomy reaching
                        # the end of a cropped field of view must not meet a wall of zeros
                        res = sliding_window(batch, predictor, win, ctx=_Quiet, overlap=0.25, sw_batch_size=4,
                                             spatial_dims=2, message="super-resolution",
                                             padding_mode="replicate")[:, 0]
                        if flip:
                            res = res[:, :, ::-1]
                        if orient == 2:
                            acc[:, :, start:stop] += np.moveaxis(res, 0, 2)
                        else:
                            acc[:, start:stop, :] += np.moveaxis(res, 0, 1)
                        done += stop - start
                        ctx.progress(done, passes, f"super-resolution: {done}/{passes} through-plane slices")
        acc /= 2 * len(flips)
        # beyond the first and last slice centres the input is extrapolated, which training never shows
        # the network (its pairs lie between samples): there the output is the interpolation
        outside = (t < 0) | (t > work.shape[0] - 1)
        acc[outside] = up[outside]
        del up
        return np.moveaxis(acc, 0, axis), affine

    @staticmethod
    def _resample_to(volume: Volume, target: np.ndarray, ctx: RunContext) -> Volume:
        """Cubic resampling from the restored fine grid to a user-chosen target spacing."""
        shape, affine = resample_geometry(volume, target)
        mapping = np.linalg.inv(volume.affine) @ affine
        data = np.asarray(volume.data)
        for ax in range(3):
            ctx.check_cancelled()
            t = mapping[ax, ax] * np.arange(shape[ax]) + mapping[ax, 3]
            data = np.moveaxis(bspline_resample_axis0(np.moveaxis(data, ax, 0), t), 0, ax)
        return Volume(np.ascontiguousarray(data), affine, name=volume.name, metadata=volume.metadata)


def slice_profile_of(work: np.ndarray, slice_spacing: float, inplane_spacing: tuple[float, float], given: Any,
                     ctx: RunContext | None = None) -> SliceProfile:
    """The slice profile: the given FWHM, or estimated from the scan (``work``: slice axis first)."""
    if given != AUTO:
        return SliceProfile(float(given), float(slice_spacing), 0, source="given")
    check = ctx.check_cancelled if ctx is not None else None
    return estimate_slice_profile(work, (float(slice_spacing), *inplane_spacing), 0, check=check)


def _ceil8(n: int) -> int:
    return int(math.ceil(n / 8) * 8)
