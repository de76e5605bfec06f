"""Real-size costs: the fused and the naive CLiC step on a real SD architecture (random weights).

``clic-bench perf --arch sd15`` runs this instead of the tiny steps section. On this CPU it times both steps at
small resolutions (seconds per step; the memory autograd keeps for backward, model weights excluded; the loss
agreement). At those resolutions and the architecture's native one (512 px for SD 1.5) it also counts the same
two steps on the data-less ``meta`` device, where nothing is computed: FLOPs (``torch.utils.flop_counter``,
forward + backward) and the saved-for-backward bytes of the identical graph. At the measured sizes the meta
bytes must equal the measured ones, which is what lets the 512 px figure stand in for a measurement a CPU
cannot make in minutes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from .learning import activation_megabytes, fused_vs_naive
from .naive import naive_step
from .placement import DeviceAudit
from .steps import StepCase, fused_loss, make_case, naive_processors

MEASURED_RESOLUTIONS = (64, 128)  # an SD 1.5 step at 128 px is ~6 s on one core here; 256 px ~4× that


def unet_parameters(case: StepCase) -> int:
    """Parameters of the frozen UNet (the trained K/V copies, registered as processor modules, excluded)."""
    unet = case.state.components.unet
    copies = {id(p) for p in case.state.capture.trainable_parameters()}
    return sum(p.numel() for p in unet.parameters() if id(p) not in copies)


def cross_attention_layers(case: StepCase) -> int:
    return sum(1 for name in case.state.components.unet.attn_processors if "attn2" in name)


StepFn = Callable[[StepCase], tuple[torch.Tensor, dict[str, float]]]


def naive_with_store(stored_mb: list[float] | None = None) -> StepFn:
    """The naive step with its store-everything processors installed for the call; appends to ``stored_mb``
    the MB of attention probabilities its store holds at the end of the step."""

    def step(c: StepCase):
        with naive_processors(c) as store:
            result = naive_step(c.state, c.batch, c.object_word, store)
            if stored_mb is not None:
                stored_mb.append(sum(t.untyped_storage().nbytes() for kept in store.values() for t in kept) / 2**20)
            return result

    return step


@contextmanager
def flash_attention_on_meta() -> Iterator[None]:
    """On ``meta``, ``scaled_dot_product_attention`` falls back to the math path, which keeps the whole
    probability tensor for backward; the CPU (flash kernel for CPU) and a GPU (flash / memory-efficient) keep
    only the output and one log-sum-exp per query. For the duration, meta inputs take the CPU flash kernel's
    own op (its meta kernel and derivative are PyTorch's), so the meta graph saves what the real one saves."""
    original = F.scaled_dot_product_attention

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        if not query.is_meta or kwargs or dropout_p:
            return original(
                query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kwargs
            )
        out, _ = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            query, key, value, 0.0, is_causal, attn_mask=attn_mask, scale=scale
        )
        return out

    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def counted(case: StepCase, step) -> dict[str, float]:
    """FLOPs of forward + backward of one step, and the MB autograd keeps for backward, on ``meta``.

    Two passes: FLOPs with the math attention (``torch.utils.flop_counter`` has no formula for the CPU flash
    op; the math path's matmuls are the attention's nominal FLOPs), bytes with the flash op (what the CPU and
    a GPU keep). Every scalar read (the loss values for the log) is answered by the placement audit with 1.
    """
    flops = FlopCounterMode(display=False)
    with DeviceAudit(), flops:
        loss, _ = step(case)
        loss.backward()
    with DeviceAudit(), flash_attention_on_meta():
        megabytes = activation_megabytes(step, case)
    return {"gflops": flops.get_total_flops() / 1e9, "activation_mb": megabytes}


def meta_counts(arch: str, resolution: int) -> dict[str, Any]:
    """FLOPs and saved-for-backward MB of the fused and the naive step, counted on ``meta`` (no compute)."""
    case = make_case(resolution, arch=arch, device="meta")
    stored: list[float] = []
    fused, naive = counted(case, fused_loss), counted(case, naive_with_store(stored))
    return {
        "resolution": resolution,
        "fused_gflops": fused["gflops"],
        "naive_gflops": naive["gflops"],
        "naive_store_mb": stored[-1],
        "fused_activation_mb": fused["activation_mb"],
        "naive_activation_mb": naive["activation_mb"],
        "unet_parameters": unet_parameters(case),
        "cross_attention_layers": cross_attention_layers(case),
    }


def real_size_costs(
    arch: str, quick: bool = False, resolutions: tuple[int, ...] = MEASURED_RESOLUTIONS
) -> dict[str, Any]:
    """Measured at ``resolutions``, counted there and at the architecture's native resolution.

    Timing: fused and naive alternate, one step each per round (4; quick: 2), after a forward pass of each; the
    fastest round counts (on a shared machine other processes only add time; the first round also pays
    first-backward allocations).
    """
    load_before = os.getloadavg()[0]
    measured = []
    for resolution in resolutions:
        case = fused_vs_naive(resolution, 1, arch=arch, rounds=2 if quick else 4, warmup=0, best=True)
        counts = meta_counts(arch, resolution)
        case.update(
            fused_gflops=counts["fused_gflops"],
            naive_gflops=counts["naive_gflops"],
            meta_fused_activation_mb=counts["fused_activation_mb"],
            meta_naive_activation_mb=counts["naive_activation_mb"],
            fused_gflops_per_s=counts["fused_gflops"] / (case["fused_ms"] / 1000),
            naive_gflops_per_s=counts["naive_gflops"] / (case["naive_ms"] / 1000),
        )
        measured.append(case)
    from clic.architectures import architecture

    target = meta_counts(arch, architecture(arch).resolution)  # 512 px for SD 1.5, 768 for SD 2.1
    return {
        "arch": arch,
        "weights": "random (seed 0)",
        "threads": torch.get_num_threads(),
        "measured": measured,
        "counted_at_target": target,
        "load_average": (load_before, os.getloadavg()[0]),
    }
