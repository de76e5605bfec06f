"""The CLiC presets' declared settings, each value with its source (no torch import: the run report reads
them). The method itself is :mod:`clic.methods.clic`."""

from __future__ import annotations

from ..presets import Setting

PAPER = "paper (CVPR 2024)"
CODE = "Mehdi0xC/clic"

# The released code's RoI prompts, drawn at random each step (learning.py L270-277, L294).
OFFICIAL_ROI_PROMPTS = (
    "A photo of {token}",
    "A pattern of {token}",
    "{token}",
    "{token} on a blank background",
    "A photo of {token} on a blank background",
    "{token} style",
    "A photo of {token} style",
    "{token} style on a blank background",
)

PAPER_SETTINGS: tuple[Setting, ...] = (
    Setting("learn.steps", 500, f"{PAPER} §4 preamble: 500 steps"),
    Setting("learn.lr", 1e-5, f"{PAPER} §4 preamble: Adam, learning rate 1e-5"),
    Setting("learn.optimizer", "adam", f"{PAPER} §4 preamble: Adam"),
    Setting("learn.train_kv", True, f"{PAPER} §3.1: the token and the cross-attention K/V train (Custom Diffusion)"),
    Setting("learn.train_q_out", False, f"{PAPER} §3.1: only K/V are named"),
    Setting(
        "learn.terms.con",
        {"weight": 1.0, "alpha": 0.5, "form": "paper"},
        f"{PAPER} §3.1 Eq. (3): l_con, Eq. (2) soft mask α + (1 − α)M with α = 0.5, weight 1 (Eq. (5))",
    ),
    Setting(
        "learn.terms.att",
        {"weight": 0.5, "resize": "antialias"},
        f"{PAPER} §3.1 Eq. (1): l_att, λ = 0.5 (Eq. (5)); mask filter our choice: the maps' antialiased bilinear",
    ),
    Setting(
        "learn.terms.roi",
        {"weight": 0.5, "form": "paper"},
        f"{PAPER} §3.1 Eq. (4): l_RoI on M ⊙ x_t, λ = 0.5 (Eq. (5))",
    ),
    Setting("learn.capture_layers", "up", f"{PAPER} §3.1: up-block cross-attention"),
    Setting(
        "learn.attention_resolution",
        None,
        f"{PAPER} §3.1: 16×16 maps (the coarsest up block at 512 px); finer maps downsampled with antialiasing",
    ),
    Setting(
        "learn.attention_norm",
        "raw",
        f"{PAPER} §3.1 does not say the map is normalised: raw probabilities ('minmax' is the named option)",
    ),
    Setting(
        "learn.context_prompt",
        "A {object} with {tokens} style",
        f"{PAPER} supplement B.2: the context prompt c = 'A OBJECT with v* style'",
    ),
    Setting("learn.roi_prompts", ("A photo of {token}",), f"{PAPER} §3.1: c* = 'A photo of v*'"),
    Setting("learn.roi_mask_space", "latent", f"{PAPER} §3.1: the RoI branch sees M ⊙ x_t"),
    Setting("learn.init_word", None, "our choice: the object word (the paper names no initialiser)"),
    Setting("learn.augment.p_flip", 0.5, f"{PAPER} supplement B.2: horizontal flip; probability our choice"),
    Setting(
        "learn.augment.p_zoom", 0.5, f"{PAPER} supplement B.2: zoom in/out with a prompt suffix; probability our choice"
    ),
    Setting("learn.augment.p_jitter", 0.3, f"{PAPER} supplement B.2: colour jitter; probability our choice"),
    Setting("learn.augment.jitter", 0.1, "our choice: jitter factors 1 ± 0.1"),
    Setting("learn.augment.p_grayscale", 0.1, f"{PAPER} supplement B.2: grayscale; probability our choice"),
    Setting("transfer.steps", 50, f"{PAPER} supplement B.3: 50 DDIM steps"),
    Setting(
        "transfer.t_start", 10, f"{PAPER} §3.2, supplement B.3: T − t_start noise levels added, 5 ≤ t_start ≤ 15 of 50"
    ),
    Setting(
        "transfer.first_step",
        "paper",
        f"{PAPER} supplement B.3: the first step at τ_(t_start) (T − t_start levels of noise)",
    ),
    Setting(
        "transfer.prompt", "A {object} with {tokens} style", f"{PAPER} supplement B.2: the context prompt of learning"
    ),
    Setting(
        "transfer.blend_mask", "region", f"{PAPER} §3.2 Eq. (6): blend with the target mask (any-coverage latent cells)"
    ),
    Setting("transfer.final_paste", True, "our choice: the outside is the target's own latents after the last step"),
    Setting("transfer.guidance", "gradient", f"{PAPER} §3.2 Eq. (7): a gradient step on ‖CA(v*) − M‖²"),
    Setting("transfer.eta", 1.0, "our choice: guidance step size (the paper gives none)"),
    Setting("transfer.attention_target", "mask", f"{PAPER} §3.2 Eq. (7): attention toward the target mask"),
    Setting("transfer.ddim_eta", 0.0, "our choice: deterministic DDIM (the paper names no η)"),
    Setting("transfer.guidance_scale", 7.5, "our choice: Stable Diffusion's default classifier-free guidance"),
)

OFFICIAL_SETTINGS: tuple[Setting, ...] = (
    Setting("learn.steps", 500, f"{CODE} reproduce.sh L15 (--max_train_steps=500)"),
    Setting(
        "learn.lr", 1e-5, f"{CODE} reproduce.sh L14 (--learning_rate=1e-5; constant schedule, learning.py L499-502)"
    ),
    Setting("learn.optimizer", "adamw", f"{CODE} learning.py L827 (torch.optim.AdamW)"),
    Setting(
        "learn.weight_decay",
        0.1,
        f"{CODE} learning.py L512, L835 (--adam_weight_decay 1e-1 on every trained parameter)",
    ),
    Setting(
        "learn.token_weight_decay", 0.1, f"{CODE} learning.py L831-835 (the token embedding is in the same AdamW group)"
    ),
    Setting(
        "learn.max_grad_norm", 1.0, f"{CODE} learning.py L514, L1070-1076 (clip_grad_norm_ over token + attention)"
    ),
    Setting("learn.train_kv", True, f"{CODE} learning.py L766"),
    Setting("learn.train_q_out", True, f"{CODE} configs/default.yaml L48; learning.py L767"),
    Setting(
        "learn.init_word", "ktn", f"{CODE} learning.py L578 (default initializer 'ktn+pll+ucd': the first, L690-694)"
    ),
    Setting("learn.context_prompt", "a {object} with {tokens} style", f"{CODE} reproduce.sh L13 (--instance_prompt)"),
    Setting(
        "learn.roi_prompts", OFFICIAL_ROI_PROMPTS, f"{CODE} learning.py L270-277, one drawn at random per step (L294)"
    ),
    Setting("learn.roi_mask_space", "pixel", f"{CODE} learning.py L105, L927 (image × mask, then encoded and noised)"),
    Setting(
        "learn.terms.con",
        {"weight": 0.5, "form": "released", "outside": 0.25, "threshold": 0.05, "border": 1},
        f"{CODE} reproduce.sh L17 (context_lambda 0.5); learning.py L107-115, L1002-1005 (Σ W(ε̂−y)² / ΣW, "
        "W = M_64, 0.25 where M_64 < 0.05, outer ring 0 under --noaug L230-232)",
    ),
    Setting(
        "learn.terms.att",
        {"weight": 0.25, "resize": "bilinear"},
        f"{CODE} reproduce.sh L16 (attention_lambda 0.25); learning.py L107, L995-999 (MSE to the bilinear 64×64 mask)",
    ),
    Setting(
        "learn.terms.roi",
        {"weight": 0.25, "form": "released"},
        f"{CODE} reproduce.sh L18 (local_lambda 0.25); learning.py L1008-1011 (Σ M_64(ε̂−y)² / ΣM_64)",
    ),
    Setting("learn.capture_layers", "up", f"{CODE} learning.py L968 ('cross_up' layers, utils/diff_utils.py L11-19)"),
    Setting(
        "learn.attention_resolution", "latent", f"{CODE} learning.py L971-978 (each map bilinear to 64×64, averaged)"
    ),
    Setting("learn.attention_norm", "minmax", f"{CODE} learning.py L996-997"),
    Setting("learn.augment.p_flip", 0.5, f"{CODE} learning.py L246-249"),
    Setting("learn.augment.p_zoom", 0.0, f"{CODE} reproduce.sh L21 (--noaug: no rescale, learning.py L252-258)"),
    Setting("learn.augment.p_jitter", 1.0, f"{CODE} learning.py L244 (ColorJitter on every draw)"),
    Setting("learn.augment.jitter", 0.5, f"{CODE} learning.py L166 (ColorJitter(brightness=0.5))"),
    Setting("learn.augment.jitter_kinds", ("brightness",), f"{CODE} learning.py L166 (brightness only)"),
    Setting("learn.augment.p_grayscale", 0.0, f"{CODE} learning.py L167, L245 (grayscale commented out)"),
    Setting("transfer.steps", 50, f"{CODE} configs/default.yaml L16 (n_timesteps 50)"),
    Setting(
        "transfer.t_start", 15, f"{CODE} reproduce.sh L35 (t_start 15 and 20; 15 here); kept steps, transfer.py L103"
    ),
    Setting(
        "transfer.first_step",
        "released",
        f"{CODE} transfer.py L100-106 (the step at i = t_start − 1 runs from the noised target and is blended in at "
        "i = t_start: first UNet step τ = 701 for t_start 15 of 50)",
    ),
    Setting("transfer.prompt", "a {object} with {tokens} style", f"{CODE} reproduce.sh L34 (edit_prompt)"),
    Setting(
        "transfer.target_latents", "sample", f"{CODE} transfer.py L50; utils/pipe_utils.py L108 (latent_dist.sample)"
    ),
    Setting("transfer.blend_mask", "soft", f"{CODE} utils/io_utils.py L50-57 (mask resized to 64×64 by PIL, /255)"),
    Setting("transfer.blend_until", 45, f"{CODE} transfer.py L100 (blending while 0 ≤ i ≤ 45)"),
    Setting("transfer.final_paste", False, f"{CODE} transfer.py L149-171 (no paste after the loop)"),
    Setting("transfer.guidance", "adam", f"{CODE} transfer.py L117, L141-143 (one step of a fresh Adam per step)"),
    Setting("transfer.eta", 0.01, f"{CODE} transfer.py L116 (lr 0.001 × att_opt) with reproduce.sh L40 (att_opt=10)"),
    Setting("transfer.guidance_until", 30, f"{CODE} transfer.py L113 (guidance while i < 30)"),
    Setting("transfer.guidance_resolution", "latent", f"{CODE} transfer.py L132-139 (up-block maps bilinear to 64×64)"),
    Setting("transfer.attention_target", "ones", f"{CODE} transfer.py L140-141 (MSE to an all-ones map)"),
    Setting("transfer.detach_attention_outputs", True, f"{CODE} src/att_processor.py L138-140 (outputs under no_grad)"),
    Setting("transfer.ddim_eta", 1.0, f"{CODE} transfer.py L85-86"),
    Setting("transfer.guidance_scale", 7.5, f"{CODE} transfer.py L54, L169"),
)

DECLARED = {"paper": PAPER_SETTINGS, "official-code": OFFICIAL_SETTINGS}
