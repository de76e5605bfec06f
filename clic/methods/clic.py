"""CLiC: in-context concept learning (Safaee et al., CVPR 2024).

Trains the token v* and the UNet cross-attention K/V (Custom Diffusion style) with l_con + λ_att l_att +
λ_RoI l_RoI, and transfers it with blending and cross-attention guidance. Two presets, each a declared
list of settings whose every value names its source (print one with ``clic methods show clic --preset
NAME``):

* ``paper`` — what the paper (CVPR 2024, arXiv 2311.17083) states; where it is silent the value says
  "our choice".
* ``official-code`` — what the released code does (github Mehdi0xC/clic at a5649f6: ``learning.py``,
  ``transfer.py``, ``reproduce.sh``, ``configs/default.yaml``, ``src/att_processor.py``, ``utils/``),
  re-derived line by line. Where it differs from the paper, this preset follows the code.

Known differences of the official-code preset from the released code, kept on purpose: the token vector
alone decays (the released AdamW also decays every other vocabulary row, whose gradient it zeroes);
on a v-prediction model the RoI rows' target uses their own clean latents (the released code uses the
whole image's, learning.py L989); fp16 casts are not reproduced; t_start counts as the
paper does (supplement B.3, T − t_start noise levels): the first UNet call is at timesteps[t_start] (the released loop also denoises step t_start − 1 from the
noised target and blends that result in, transfer.py L100-106).
"""

from __future__ import annotations

from ..learn import LearnConfig
from ..presets import preset_overrides
from .base import CROSS_ATTENTION_MEMORY, Method
from .clic_sources import DECLARED, OFFICIAL_ROI_PROMPTS, OFFICIAL_SETTINGS, PAPER_SETTINGS  # noqa: F401


class CLiC(Method):
    name = "clic"
    description = "In-context concept learning: soft-masked context loss, attention loss, RoI loss"
    trains = "token embedding + cross-attention K/V (official-code: + Q/out)"
    base_config = LearnConfig()
    default_preset = "paper"
    declared_settings = DECLARED
    presets = {name: preset_overrides(settings) for name, settings in declared_settings.items()}
    sources = {setting.key: setting.source for setting in PAPER_SETTINGS}
    gpu_memory = {"*": CROSS_ATTENTION_MEMORY}  # 7.1 GiB at 512 px fp32, ≈ 3.7 GiB bf16
