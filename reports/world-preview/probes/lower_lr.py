"""Probe behind reports/world-preview/world-gate-step-14447-lr5e-5.json (not part of the harness).

Continues a unet-stage training checkpoint for N steps at another constant lr, on the same batches and noise the
main run draws at those steps (the stream and the generator are functions of the step), and writes a checkpoint that
`clic models world-gate --checkpoint` reads. The checkpoint keeps the main run's settings record, so it must not be
resumed or exported as the main run.

    PYTHONPATH=. python reports/world-preview/probes/lower_lr.py ckpt/unet/checkpoint.pt annealed.pt 5e-5 800
"""

import sys
import time
from pathlib import Path

import torch

from clic.world.stage import TrainSettings
from clic.world.train import _atomic_save, _checkpoint, _resume, _stage, architecture_hash


def main(source: Path, out: Path, lr: float, steps: int) -> None:
    payload = torch.load(source, weights_only=False, map_location="cpu")
    settings = TrainSettings(**payload["settings"])
    stage = _stage(settings.stage)
    torch.manual_seed(settings.seed)  # as train_stage builds the model
    model = stage.build(settings).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=settings.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(settings.seed)
    state = _resume(payload, model, optimizer, generator)
    for group in optimizer.param_groups:
        group["lr"] = lr
    first, started, window = state.step, time.monotonic(), []
    while state.step < first + steps:
        loss = stage.loss(model, state.step, generator, settings)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        state.record(loss.item())
        window.append(loss.item())
        if len(window) == 100:
            print(f"step {state.step} lr {lr:g} mean loss {sum(window) / 100:.5f} {time.monotonic() - started:.0f}s")
            window = []
    _atomic_save(_checkpoint(settings, architecture_hash(model), model, optimizer, generator, state), out)
    print(f"saved {out} at step {state.step}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main(Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
