"""clic.optimizer_step: the one optimiser step every learning loop uses (the shared loop, SingleInsert's stages,
ConceptExpress's phases). Expected values are written out from the rules, not taken from the class."""

from __future__ import annotations

import pytest
import torch

from clic.optimizer_step import OptimizerStep, make_optimizer


def test_accumulated_micro_steps_average_their_gradients_and_clipping_caps_the_norm() -> None:
    weight = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
    targets = [torch.tensor([3.0, 0.0]), torch.tensor([-1.0, 4.0])]
    # loss_i = ||w - target_i||²: gradient 2 (w - target_i); two micro-steps, each loss divided by 2: their mean
    expected_grad = sum(2 * (weight.detach() - t) for t in targets) / 2
    step = OptimizerStep(torch.optim.SGD([weight], lr=0.5), [weight], max_grad_norm=1.0, accumulation=2)
    seen = []
    step(lambda i: ((weight - targets[i]) ** 2).sum(), "step 0", after_backward=seen.append)
    assert seen == [0, 1]
    clipped = expected_grad * (1.0 / (expected_grad.norm() + 1e-6))  # torch's clip_grad_norm_ factor
    assert torch.allclose(weight.detach(), torch.tensor([1.0, -2.0]) - 0.5 * clipped, atol=1e-6)


def test_one_micro_step_without_clipping_is_the_plain_update() -> None:
    weight = torch.nn.Parameter(torch.tensor([0.5]))
    step = OptimizerStep(torch.optim.SGD([weight], lr=0.1), [weight])
    step(lambda _: (3 * weight).sum(), "step 0")
    assert torch.allclose(weight.detach(), torch.tensor([0.5 - 0.1 * 3.0]))


def test_a_non_finite_loss_names_the_step_and_changes_nothing() -> None:
    weight = torch.nn.Parameter(torch.tensor([1.0]))
    step = OptimizerStep(make_optimizer("adam", [weight], lr=0.1), [weight])
    with pytest.raises(FloatingPointError, match="non-finite loss nan at stage_2 step 7"):
        step(lambda _: weight.sum() * float("nan"), "stage_2 step 7")
    assert weight.item() == 1.0
    with pytest.raises(ValueError, match="unknown optimizer 'sgd'"):
        make_optimizer("sgd", [weight])
