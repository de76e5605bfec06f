"""Probe behind reports/world-preview/mean-start-16089.json (not part of the harness).

The stage-4 gate's readings of one UNet checkpoint when DDIM starts from N(0, 1), as the stock pipeline does, and
from N(0, 1) + sqrt(abar_t0) * mu, where mu is the per-channel mean of the scaled world latents of 256 *train*
renders and t0 is DDIM's first timestep. The world latents have a mean of about 1.8 sigma, and SD's schedule keeps
sqrt(abar_961) = 0.085 of it at the first step (Lin et al. 2024, non-zero terminal SNR); the stock start lacks it.
The zero start reproduces `clic models world-gate --checkpoint` exactly (same seed, same noise).

    PYTHONPATH=. python reports/world-preview/probes/mean_start.py ckpt/unet/checkpoint.pt > out.json
"""

import json
import sys

import numpy as np
import torch

from clic.components import sd_pipeline
from clic.world.classifier import load_classifier
from clic.world.data import WORLD_SEED, render_batch, sample_scene
from clic.world.diffusion import (
    GATE_CAPTIONS,
    GATE_GUIDANCE,
    GATE_STEPS,
    _classifier_reading,
    _optional_scorer,
    _rounded,
    components_of,
    load_checkpoint_model,
    noise_schedule_alphas,
    scorer_agreement,
)


def main(checkpoint: str) -> dict:
    model, step = load_checkpoint_model(checkpoint)
    components = components_of(model)
    renders, _ = render_batch(0, 256, "train", WORLD_SEED)
    with torch.no_grad():
        latents = components.vae.encode(torch.from_numpy(renders)).latent_dist.mode()
    mu = (latents * components.vae.config.scaling_factor).mean(dim=(0, 2, 3), keepdim=True)
    scenes = [sample_scene(index, "heldout", WORLD_SEED) for index in range(GATE_CAPTIONS)]
    classifier, scorer = load_classifier(), _optional_scorer()
    pipeline = sd_pipeline(components)
    pipeline.scheduler.set_timesteps(GATE_STEPS)
    kept = noise_schedule_alphas()[int(pipeline.scheduler.timesteps[0])].sqrt()
    side = components.resolution
    factor = 2 ** (len(components.vae.config.block_out_channels) - 1)
    rendered = torch.from_numpy(np.stack([scene.render() for scene in scenes]).transpose(0, 3, 1, 2)).float()
    record = {"unet_step": step, "latent_mean": [round(v, 4) for v in mu.flatten().tolist()], "kept": float(kept)}
    for name, shift in (("zero_start", 0.0), ("mean_start", kept * mu)):
        generator = torch.Generator().manual_seed(0)
        images = []
        for start in range(0, len(scenes), 25):  # world-gate's batches, so the zero start draws the same noise
            batch = scenes[start : start + 25]
            noise = torch.randn((len(batch), 4, side // factor, side // factor), generator=generator)
            with torch.no_grad():
                images.append(
                    pipeline(
                        [scene.caption for scene in batch],
                        num_inference_steps=GATE_STEPS,
                        guidance_scale=GATE_GUIDANCE,
                        latents=noise + shift,
                        height=side,
                        width=side,
                        output_type="pt",
                    ).images.float()
                )
        images = torch.cat(images) * 2 - 1
        record[name] = {
            "classifier": _rounded(_classifier_reading(classifier, images, scenes)),
            "scorer": scorer_agreement(scorer, images, scenes),
            "mean_brightness": round(float((images.mean() + 1) / 2), 4),
            "mean_rgb_l1_to_render": round(float(((images + 1) / 2 - rendered).mean(dim=(2, 3)).abs().mean()), 4),
        }
    record["renders_mean_brightness"] = round(float(rendered.mean()), 4)
    return record


if __name__ == "__main__":
    torch.set_num_threads(2)
    print(json.dumps(main(sys.argv[1]), indent=1))
