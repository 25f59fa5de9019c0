"""Normative VAE: a MONAI ``AutoencoderKL`` learns normal tissue; its reconstruction is the healthy estimate.

A variational autoencoder with a spatial latent (2D tiles of planes across the slice axis)
is trained to reconstruct normal tissue through a narrow bottleneck (8x downsampling, 4 latent
channels) with a KL prior; with references it reconstructs a correction to their aligned mean
(the atlas prior), so it starts from the atlas and learns how tissue departs from it. Tissue it never saw (a lesion) reconstructs poorly; the residual,
averaged over several posterior samples, scored and calibrated by
:mod:`napari_medgen.normative`, is the anomaly map (as in Baur et al., "Autoencoders for
unsupervised anomaly segmentation in brain MR images: a comparative study", MedIA 2021).
"""

from __future__ import annotations

import numpy as np

from ..family import RunContext
from ..normative import NormativeFamily, NormativePreset

__all__ = ["NormativeVAE", "PRESETS"]

PRESETS: dict[str, NormativePreset] = {
    # ~3 minutes of training on 2 CPU cores; planes across one axis
    "fast": NormativePreset(channels=(16, 32, 32, 64), tile=64, batch=16, lr=2e-3, train_seconds=180.0,
                            max_steps=100_000, orientations=1, calib_slices=16,
                            extra=(("kl_weight", 1e-4), ("samples", 3), ("latent", 4))),
    # a GPU: wider, larger tiles, the three plane orientations averaged
    "quality": NormativePreset(channels=(32, 64, 128, 128), tile=96, batch=32, lr=1e-3, train_seconds=900.0,
                               max_steps=1_000_000, orientations=3, calib_slices=48,
                               extra=(("kl_weight", 1e-4), ("samples", 5), ("latent", 4), ("infer_batch", 16))),
}


class NormativeVAE(NormativeFamily):
    id = "medgen.vae_anomaly"
    display_name = "Normative VAE (reconstruction residual)"
    short_name = "VAE"
    version = "0.1.0"
    description = (
        "A variational autoencoder (MONAI AutoencoderKL, 2D tiles) learns normal tissue from healthy reference "
        "scans of the same contrast (registered to the scan with SimpleITK), or from the scan itself with a "
        "robust loss. The scan is reconstructed 'as if healthy' (mean of several posterior samples); the local "
        "RMS residual, calibrated per tissue intensity and edge strength against normal tissue, is a z-score "
        "heatmap. Candidate regions: connected voxels above the threshold."
    )
    citation = (
        "Kingma DP, Welling M. Auto-Encoding Variational Bayes. ICLR 2014. Baur C, Denner S, Wiestler B, "
        "Navab N, Albarqouni S. Autoencoders for unsupervised anomaly segmentation in brain MR images: "
        "a comparative study. Medical Image Analysis 2021;69:101952."
    )
    priority = 5
    trains = True  # learns normal tissue from the references (or the scan) each run
    PRESETS = PRESETS
    params = NormativeFamily.common_params(tuple(PRESETS), threshold=10.0)

    def build(self, preset: NormativePreset):
        from monai.networks.nets import AutoencoderKL

        return AutoencoderKL(
            spatial_dims=2,
            in_channels=2,  # the plane and the references' prior (empty without references)
            out_channels=1,
            channels=preset.channels,
            latent_channels=int(preset.get("latent", 4)),
            num_res_blocks=1,
            norm_num_groups=8,
            attention_levels=(False,) * len(preset.channels),
            with_encoder_nonlocal_attn=False,
            with_decoder_nonlocal_attn=False,
        )

    def loss(self, net, tiles, preset: NormativePreset):
        import torch

        recon, mu, sigma = net(tiles)
        recon = recon + tiles[:, 1:2]  # a correction to the references' prior (0 without references)
        kl = 0.5 * torch.mean(mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-8) - 1.0)
        return (recon.float() - tiles[:, :1]).abs(), float(preset.get("kl_weight", 1e-4)) * kl

    def reconstruct(self, net, planes: np.ndarray, preset: NormativePreset, ctx: RunContext,
                    progress: tuple[int, int, int]) -> np.ndarray:
        import torch

        from ..engine import autocast

        factor = 2 ** (len(preset.channels) - 1)
        n, _, h, w = planes.shape
        ph, pw = -h % factor, -w % factor
        padded = np.pad(planes, ((0, 0), (0, 0), (0, ph), (0, pw)), mode="reflect")
        out = np.empty((n, h, w), dtype=np.float32)
        samples = int(preset.get("samples", 3))
        device = torch.device(ctx.device)
        gen = torch.Generator(device="cpu").manual_seed(ctx.seed + 1)
        batch = int(preset.get("infer_batch", 4))
        start, stop, total = progress
        with torch.no_grad(), autocast(device, enabled=ctx.amp):
            for i in range(0, n, batch):
                ctx.check_cancelled()
                x = torch.from_numpy(np.ascontiguousarray(padded[i : i + batch])).to(device)
                mu, sigma = net.encode(x)
                acc = torch.zeros_like(x[:, :1], dtype=torch.float32)
                for _ in range(samples):
                    eps = torch.randn(mu.shape, generator=gen).to(device, mu.dtype)
                    acc += (net.decode(mu + sigma * eps) + x[:, 1:2]).float()
                out[i : i + batch] = (acc / samples)[:, 0, :h, :w].cpu().numpy()
                ctx.progress(start + (stop - start) * min(n, i + batch) // n, total,
                             f"reconstructing: plane {min(n, i + batch)}/{n}")
        return out
