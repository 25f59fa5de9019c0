"""Normative diffusion model: patch-wise partial noising and denoising (pDDPM) with MONAI parts.

A MONAI ``DiffusionModelUNet`` learns to denoise a box of a normal-tissue tile that was
noised to level t while the rest of the tile stays clean (so it learns to restore tissue from
its surroundings), as in pDDPM (Behrendt et al., "Patched Diffusion Models for Unsupervised
Anomaly Detection in Brain MRI", MIDL 2023). It predicts the clean box directly
(``prediction_type="sample"``), as a correction to the references' prior when there is one
(the mean of the aligned reference scans: the model starts from the atlas and learns how
tissue departs from it). At inference each plane is covered by a checkerboard of boxes:
the boxes of one colour are noised to level t and denoised from the other colour's clean
tissue (one step, or several DDIM steps with the context re-imposed after each), then the
other colour; the reconstructions are averaged over noise levels (and, in the quality preset,
over a half-box shift of the grid). A lesion cannot be predicted from the healthy tissue
around it, so it is replaced by normal-looking tissue; the calibrated residual
(:mod:`napari_medgen.normative`) is the anomaly map.
"""

from __future__ import annotations

import numpy as np

from ..family import RunContext
from ..normative import NormativeFamily, NormativePreset

__all__ = ["NormativeDiffusion", "PRESETS"]

PRESETS: dict[str, NormativePreset] = {
    # ~4 minutes of training on 2 CPU cores, one noise level, one-step denoising
    "fast": NormativePreset(channels=(16, 32, 64), tile=64, batch=16, lr=2e-3, train_seconds=240.0,
                            max_steps=100_000, orientations=1, calib_slices=12,
                            extra=(("levels", (350,)), ("shifts", 1), ("ddim_steps", 1), ("res_blocks", 1))),
    # a GPU: wider, two noise levels, shifted grids, a few DDIM steps, three orientations
    "quality": NormativePreset(channels=(32, 64, 128), tile=96, batch=32, lr=1e-3, train_seconds=900.0,
                               max_steps=1_000_000, orientations=3, calib_slices=48,
                               extra=(("levels", (250, 450)), ("shifts", 2), ("ddim_steps", 4),
                                      ("res_blocks", 2), ("infer_batch", 16))),
}

TRAIN_STEPS = 1000  # the scheduler's number of training timesteps
TRAIN_T = (50, 700)  # the noise levels seen in training (inference uses levels inside this range)


def _scheduler():
    from monai.networks.schedulers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=TRAIN_STEPS, schedule="linear_beta", clip_sample=False,
                         prediction_type="sample")


class NormativeDiffusion(NormativeFamily):
    id = "medgen.ddpm_anomaly"
    display_name = "Normative diffusion (patched DDPM)"
    short_name = "DDPM"
    version = "0.1.0"
    description = (
        "A denoising diffusion model (MONAI DiffusionModelUNet + DDIM scheduler) learns normal tissue from "
        "healthy reference scans of the same contrast (registered to the scan with SimpleITK), or from the "
        "scan itself with a robust loss. Each box of a checkerboard is noised and restored from the clean "
        "tissue around it (patched DDPM); the local RMS residual, calibrated per tissue intensity and edge "
        "strength against normal tissue, is a z-score heatmap. Candidate regions: connected voxels above "
        "the threshold."
    )
    citation = (
        "Behrendt F, Bhattacharya D, Kruger J, Opfer R, Schlaefer A. Patched Diffusion Models for "
        "Unsupervised Anomaly Detection in Brain MRI. MIDL 2023. Ho J, Jain A, Abbeel P. Denoising Diffusion "
        "Probabilistic Models. NeurIPS 2020. Song J, Meng C, Ermon S. Denoising Diffusion Implicit Models. "
        "ICLR 2021."
    )
    priority = 10
    trains = True  # learns normal tissue from the references (or the scan) each run
    PRESETS = PRESETS
    params = NormativeFamily.common_params(tuple(PRESETS), threshold=10.0)

    def build(self, preset: NormativePreset):
        from monai.networks.nets import DiffusionModelUNet

        return DiffusionModelUNet(
            spatial_dims=2,
            in_channels=3,  # the partly noised plane, the box mask, the references' prior (or empty)
            out_channels=1,
            channels=preset.channels,
            attention_levels=(False,) * len(preset.channels),
            num_res_blocks=int(preset.get("res_blocks", 1)),
            norm_num_groups=8,
        )

    def loss(self, net, tiles, preset: NormativePreset):
        import torch

        b, _, h, w = tiles.shape
        x = tiles[:, :1] * 2.0 - 1.0
        prior = tiles[:, 1:2] * 2.0 - 1.0
        device = x.device
        mask = torch.zeros_like(x)
        sizes = torch.randint(h // 4, h // 2 + 1, (b,))
        for i in range(b):
            s = int(sizes[i])
            y0, x0 = int(torch.randint(0, h - s + 1, ())), int(torch.randint(0, w - s + 1, ()))
            mask[i, :, y0 : y0 + s, x0 : x0 + s] = 1.0
        t = torch.randint(TRAIN_T[0], TRAIN_T[1], (b,), device=device)
        noisy = self._scheduler.add_noise(x, torch.randn_like(x), t)
        x_in = mask * noisy + (1 - mask) * x
        pred = net(torch.cat([x_in, mask, prior], dim=1), t) + prior
        weight = mask + 0.1 * (1 - mask)
        return (pred.float() - x).abs() * weight, None

    @property
    def _scheduler(self):
        sched = getattr(self, "_sched", None)
        if sched is None:
            sched = self._sched = _scheduler()
        return sched

    def reconstruct(self, net, planes: np.ndarray, preset: NormativePreset, ctx: RunContext,
                    progress: tuple[int, int, int]) -> np.ndarray:
        import torch

        from ..engine import autocast

        sched = _scheduler()
        n, _, h, w = planes.shape
        factor = 2 ** (len(preset.channels) - 1)
        ph, pw = -h % factor, -w % factor
        padded = np.pad(planes, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect") * 2.0 - 1.0
        H, W = padded.shape[2:]
        box = preset.tile // 2
        levels = tuple(int(v) for v in preset.get("levels", (350,)))
        shifts = int(preset.get("shifts", 1))
        ddim = int(preset.get("ddim_steps", 1))
        device = torch.device(ctx.device)
        gen = torch.Generator(device="cpu").manual_seed(ctx.seed + 2)
        masks = []
        yy, xx = np.mgrid[0:H, 0:W]
        for k in range(shifts):
            off = k * box // 2
            parity = ((yy + off) // box + (xx + off) // box) % 2
            masks += [(parity == 0), (parity == 1)]
        mask_t = torch.from_numpy(np.stack(masks).astype(np.float32))[:, None].to(device)  # (M, 1, H, W)
        passes = len(levels) * shifts
        out = np.empty((n, h, w), dtype=np.float32)
        batch = int(preset.get("infer_batch", 2))
        start, stop, total = progress
        with torch.no_grad(), autocast(device, enabled=ctx.amp):
            for i in range(0, n, batch):
                ctx.check_cancelled()
                both = torch.from_numpy(np.ascontiguousarray(padded[i : i + batch])).to(device)
                x, prior = both[:, :1], both[:, 1:2]
                acc = torch.zeros_like(x, dtype=torch.float32)
                for level in levels:
                    for m in mask_t:
                        m = m.expand_as(x)
                        acc += m * self._denoise(net, sched, x, prior, m, level, ddim, gen)
                out[i : i + batch] = ((acc / passes + 1.0) / 2.0)[:, 0, :h, :w].cpu().numpy()
                ctx.progress(start + (stop - start) * min(n, i + batch) // n, total,
                             f"denoising: plane {min(n, i + batch)}/{n}")
        return out

    @staticmethod
    def _denoise(net, sched, x, prior, mask, level: int, ddim: int, gen):
        """Noise the masked boxes of ``x`` to ``level`` and restore them from the clean context."""
        import torch

        noise = torch.randn(x.shape, generator=gen).to(x.device, x.dtype)
        t = torch.full((x.shape[0],), level, device=x.device, dtype=torch.long)
        sample = mask * sched.add_noise(x, noise, t) + (1 - mask) * x
        if ddim <= 1:
            return (net(torch.cat([sample, mask, prior], dim=1), t) + prior).float()
        steps = np.linspace(level, 0, ddim + 1).round().astype(int)[:-1]
        pred = x
        for j, tj in enumerate(steps):
            tt = torch.full((x.shape[0],), int(tj), device=x.device, dtype=torch.long)
            pred = (net(torch.cat([sample, mask, prior], dim=1), tt) + prior).float()
            if j + 1 < len(steps):  # DDIM (eta 0) to the next level, then the clean context again
                a_t = sched.alphas_cumprod[int(tj)].to(x.device)
                a_n = sched.alphas_cumprod[int(steps[j + 1])].to(x.device)
                eps = (sample - a_t.sqrt() * pred) / (1 - a_t).sqrt()
                sample = a_n.sqrt() * pred + (1 - a_n).sqrt() * eps
                sample = mask * sample + (1 - mask) * x
        return pred
