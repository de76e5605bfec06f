"""Learning-step benchmarks: fused vs naive (time, loss agreement, memory kept for backward), capture cost,
cached work."""

from __future__ import annotations

import os
import time
import weakref
from typing import Any

import torch

from .naive import naive_step
from .steps import capture_off_case, fused_loss, make_case, naive_loss, naive_processors, time_naive, time_step


class _Saved:
    """What autograd holds in place of a saved tensor while counting: alive exactly as long as the graph node."""

    __slots__ = ("tensor", "__weakref__")

    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor = tensor


def activation_megabytes(step, case) -> float:
    """Bytes autograd keeps for the backward pass of one step (plus what the step stores), in MB.

    Counted with ``saved_tensors_hooks`` at the end of the forward pass: deterministic and independent of
    machine load, unlike RSS. Only what the graph still holds then counts (a branch the step dropped freed its
    saves); each storage once (views share it). The model's weights and the trained parameters, which autograd
    also saves (a linear layer keeps its weight for the input gradient), are resident anyway and not counted.
    Works on the data-less ``meta`` device too (storages are told apart by identity, not address).
    """
    components = case.state.components
    resident = {
        tensor.untyped_storage()._cdata
        for module in (components.unet, components.text_encoder, components.vae)
        for tensor in (*module.parameters(), *module.buffers())
    }
    resident.add(case.state.tokens.parameter.untyped_storage()._cdata)
    held: weakref.WeakSet[_Saved] = weakref.WeakSet()

    def pack(tensor: torch.Tensor) -> _Saved:
        saved = _Saved(tensor)
        held.add(saved)
        return saved

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda saved: saved.tensor):
        loss, _ = step(case)
    storages = {saved.tensor.untyped_storage()._cdata: saved.tensor.untyped_storage().nbytes() for saved in held}
    total = sum(nbytes for key, nbytes in storages.items() if key not in resident)
    loss.backward()
    return total / 2**20


def fused_vs_naive(
    resolution: int, repeats: int, arch: str = "tiny", rounds: int = 3, warmup: int = 2, best: bool = False
) -> dict[str, Any]:
    """Loss agreement, seconds per step (median of ``repeats`` after ``warmup``; the middle of ``rounds``
    interleaved rounds, or with ``best`` the fastest) and the memory kept for backward, of the fused and the
    naive step on ``arch``."""
    case = make_case(resolution, arch=arch)
    fused, fused_values = fused_loss(case)
    naive, naive_values = naive_loss(case)
    worst = max(
        abs(fused_values[k] - naive_values[k]) / max(abs(naive_values[k]), 1e-12)
        for k in ("con", "att", "roi", "total")
    )
    # Interleave the two variants so machine noise hits both alike.
    fused_times, naive_times = [], []
    for _ in range(rounds):
        fused_times.append(time_step(fused_loss, case, repeats, warmup))
        naive_times.append(time_naive(case, repeats, warmup))
    pick = 0 if best else rounds // 2
    fused_s, naive_s = sorted(fused_times)[pick], sorted(naive_times)[pick]
    with naive_processors(case) as store:
        naive_mb = activation_megabytes(lambda c: naive_step(c.state, c.batch, c.object_word, store), case)
    return {
        "arch": arch,
        "resolution": resolution,
        "fused_ms": fused_s * 1000,
        "naive_ms": naive_s * 1000,
        "speedup": naive_s / fused_s,
        "max_rel_loss_diff": worst,
        "fused_activation_mb": activation_megabytes(fused_loss, case),
        "naive_activation_mb": naive_mb,
    }


def capture_cost(resolution: int, repeats: int) -> dict[str, Any]:
    """Step time with the attention term (capture on) vs the same step without it (capture off)."""
    on_case, off_case = make_case(resolution), capture_off_case(resolution)
    on_times, off_times = [], []
    for _ in range(3):
        on_times.append(time_step(fused_loss, on_case, repeats))
        off_times.append(time_step(fused_loss, off_case, repeats))
    on_s, off_s = sorted(on_times)[1], sorted(off_times)[1]
    # What the capture keeps: the requested token columns only, vs a whole probability tensor.
    state = on_case.state
    from clic.learn import encode_text

    text, ids = encode_text(state.components, ["A chair with <v*> style"])
    state.capture.set_tokens(state.tokens.positions(ids))
    with torch.no_grad():
        state.components.unet(on_case.batch.latents, on_case.batch.timestep, encoder_hidden_states=text)
    kept = max(t.numel() for t in state.capture.maps().values())
    heads = max(m.heads for n, m in state.components.unet.named_modules() if n.endswith("attn2"))
    full = max(t.shape[1] for t in state.capture.maps().values()) * text.shape[1] * heads
    state.capture.clear()
    return {
        "resolution": resolution,
        "capture_on_ms": on_s * 1000,
        "capture_off_ms": off_s * 1000,
        "capture_overhead": on_s / off_s - 1,
        "largest_kept_elements": kept,
        "full_probabilities_elements": full,
    }


def count_calls(components) -> dict[str, int]:
    """Count VAE encodes and text-encoder forward passes made on ``components`` from now on."""
    calls = {"vae_encode": 0, "text_encoder": 0}
    encode = components.vae.encode

    def counting_encode(*args, **kwargs):
        calls["vae_encode"] += 1
        return encode(*args, **kwargs)

    components.vae.encode = counting_encode
    components.text_encoder.register_forward_hook(
        lambda *_: calls.__setitem__("text_encoder", calls["text_encoder"] + 1)
    )
    return calls


def cached_work(steps: int = 60) -> dict[str, Any]:
    """VAE encodes and text-encoder calls of one learning run, and of one transfer."""
    from clic.learn import ConceptSource
    from clic.methods.base import get_method
    from clic.models import build_tiny
    from clic.transfer import TransferSettings, transfer_concept

    components = build_tiny()
    learn_calls = count_calls(components)
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(64, 64)
    mask[8:40, 16:48] = 1
    source = ConceptSource(torch.rand(3, 64, 64, generator=generator) * 2 - 1, mask, "chair")
    geometric_only = {"augment": {"p_jitter": 0.0, "p_grayscale": 0.0}, "steps": steps}
    concept = get_method("clic").learn(components, source, overrides=geometric_only, progress=False)
    fresh = build_tiny()
    transfer_calls = count_calls(fresh)
    transfer_concept(fresh, concept, source.image, mask, "chair", TransferSettings(t_start=10, steps=20), seed=0)
    return {
        "learn_steps": steps,
        "learn_vae_encodes": learn_calls["vae_encode"],
        "learn_text_encoder_calls": learn_calls["text_encoder"],
        "transfer_steps": 10,
        "transfer_vae_encodes": transfer_calls["vae_encode"],
        "transfer_text_encoder_calls": transfer_calls["text_encoder"],
    }


def _loop_source():
    from clic.learn import ConceptSource

    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(64, 64)
    mask[8:40, 16:48] = 1
    return ConceptSource(torch.rand(3, 64, 64, generator=generator) * 2 - 1, mask, "chair")


def loop_step_case(steps: int, seed: int = 0):
    """The CLiC paper preset's learning step exactly as ``learn_concept`` runs it: state from the same
    :func:`clic.learn.prepare_training`, the same seed, the first ``steps`` batches the loop itself draws
    (augmented source, t, ε, valid region, prompt suffix), the attention copies trainable and the UNet in eval
    mode as in the loop's single phase. Returns (state, batches, the method's step function, object word)."""
    from clic.learn import draw_batch, prepare_training, seed_everything
    from clic.methods.base import get_method
    from clic.models import build_tiny

    method = get_method("clic")
    components, source = build_tiny(), _loop_source()
    config = method.learn_config("paper", {"steps": steps})
    generator = seed_everything(seed)
    state, banks = prepare_training(components, source, config)
    (phase,) = config.schedule()
    for p in state.capture.trainable_parameters():
        p.requires_grad_(phase.attention_lr > 0)
    components.unet.train(False)
    device = components.unet.device
    batches = [
        draw_batch(components, banks, config, state.objective, generator, device, source.n_tokens) for _ in range(steps)
    ]
    return state, batches, method.training_step, source.object_word


def time_loop_steps(case) -> tuple[float, float]:
    """(wall s, CPU s) of forward + backward of the step over every batch of ``case``, as the loop runs it."""
    state, batches, step_fn, word = case
    params = [state.tokens.parameter, *state.capture.trainable_parameters()]
    wall, cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        for p in params:
            p.grad = None
        loss, _ = step_fn(state, batch, word)
        loss.backward()
    return time.perf_counter() - wall, time.process_time() - cpu


def learn_loop_cost(
    short: int = 20, long: int = 60, repeats: int = 2, threads: tuple[int, ...] | None = None
) -> dict[str, Any]:
    """Whole ``learn_concept`` runs (CLiC, paper preset, 64 px, augmentation on, as ``clic learn`` runs them) per
    extra step, against the same step alone (forward + backward) over the same batches: what the loop adds
    around the step (augmentation and its VAE encodes, the optimiser, bookkeeping).

    Runs of ``short`` and ``long`` steps difference out the fixed costs (installing processors, the snapshot); the
    step alone runs over the loop's first ``long − short`` batches, so both sides are totals over the same number
    of steps, timed in turn in each of ``repeats`` rounds (best of each), wall and CPU time. Measured at each torch
    thread count in ``threads`` (default: this process's count, and 1 as a Ray worker with num_cpus=1 runs).
    """
    from clic.methods.base import get_method
    from clic.models import build_tiny

    method, source = get_method("clic"), _loop_source()
    default_threads = torch.get_num_threads()
    threads = threads or tuple(dict.fromkeys((default_threads, 1)))

    def learn_run(steps: int) -> tuple[float, float]:
        components = build_tiny()
        wall, cpu = time.perf_counter(), time.process_time()
        method.learn(components, source, overrides={"steps": steps}, progress=False)
        return time.perf_counter() - wall, time.process_time() - cpu

    settings, load_before = [], _load_average()
    try:
        for count in threads:
            torch.set_num_threads(count)
            learn_run(2)  # first-call costs (allocator, kernels for these shapes) out of the way
            step_case = loop_step_case(long - short)
            time_loop_steps(loop_step_case(2))
            rounds: dict[str, list[tuple[float, float]]] = {"short": [], "long": [], "step": []}
            for _ in range(repeats):  # in turn, so machine noise hits all three alike
                rounds["short"].append(learn_run(short))
                rounds["long"].append(learn_run(long))
                rounds["step"].append(time_loop_steps(step_case))
            best = {name: (min(w for w, _ in values), min(c for _, c in values)) for name, values in rounds.items()}
            extra = long - short
            loop_wall = (best["long"][0] - best["short"][0]) / extra
            loop_cpu = (best["long"][1] - best["short"][1]) / extra
            step_wall, step_cpu = best["step"][0] / extra, best["step"][1] / extra
            settings.append(
                {
                    "threads": count,
                    "short_s": best["short"][0],
                    "long_s": best["long"][0],
                    "learn_per_step_ms": loop_wall * 1000,
                    "fused_step_ms": step_wall * 1000,
                    "learn_per_step_cpu_ms": loop_cpu * 1000,
                    "fused_step_cpu_ms": step_cpu * 1000,
                    # differences of noisy totals can come out ≤ 0 on a loaded machine: no ratio then
                    "ratio": loop_wall / step_wall if loop_wall > 0 else float("nan"),
                    "cpu_ratio": loop_cpu / step_cpu if loop_cpu > 0 else float("nan"),
                }
            )
    finally:
        torch.set_num_threads(default_threads)
    return {
        "short_steps": short,
        "long_steps": long,
        "repeats": repeats,
        "load_average_before": load_before,
        "load_average_after": _load_average(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "settings": settings,
    }


def _load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []
