"""CLiC: in-context concept learning (Safaee et al., CVPR 2024).

Trains the token v* and the UNet cross-attention K/V (Custom Diffusion style) with
l_con + 0.5·l_att + 0.5·l_RoI. Two presets: ``paper`` (the equations of §3) and ``official-code``
(the behaviour of the released code, github Mehdi0xC/clic, which differs in the places listed below).
"""
from __future__ import annotations

from ..learn import LearnConfig
from .base import Method

# The released code samples its RoI prompt from eight templates.
OFFICIAL_ROI_PROMPTS = (
    "A photo of {token}",
    "A rendering of {token}",
    "A cropped photo of {token}",
    "A close-up photo of {token}",
    "A good photo of {token}",
    "A bright photo of {token}",
    "A detailed photo of {token}",
    "An image of {token}",
)


class CLiC(Method):
    name = "clic"
    description = "In-context concept learning: soft-masked context loss, attention loss, RoI loss"
    trains = "token embedding + cross-attention K/V (official-code: + Q/out)"
    base_config = LearnConfig()
    default_preset = "paper"
    presets = {
        "paper": {},
        "official-code": {
            "learn": {
                "train_q_out": True,
                "terms": {"con": {"weight": 0.5, "alpha": 0.25}, "att": 0.25, "roi": 0.25},
                "roi_mask_space": "pixel",
                "roi_prompts": OFFICIAL_ROI_PROMPTS,
                "optimizer": "adamw",
                "weight_decay": 0.1,
            },
            "transfer": {"ddim_eta": 1.0, "attention_target": "ones", "t_start": 18},
        },
    }
    sources = {
        "steps": "paper §4 (500 steps)",
        "lr": "paper §4 (Adam, 1e-5)",
        "alpha": "paper Eq. 3 (α = 0.5); official code α_out = 0.25",
        "lambda_att, lambda_roi": "paper Eq. 6 (0.5, 0.5); official code 0.5/0.25/0.25 for con/att/roi",
        "prompts": "paper §3.1 ('A OBJECT with v* style', 'A photo of v*'); official code: 8 RoI templates",
        "augmentations": "paper supplement B (grayscale, flip, zoom with prompt suffix, colour jitter)",
        "train_q_out, AdamW wd 0.1, pixel-space RoI mask": "official code",
        "t_start": "paper §4.1 (5–15 of 50); official code 15–20",
        "eta": "paper: DDIM η = 0; official code η = 1.0, guidance toward an all-ones map",
    }
