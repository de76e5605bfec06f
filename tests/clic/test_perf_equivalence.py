"""The fused learning step computes exactly what the equations say (the naive reference of benchmarks/perf)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.perf.steps import capture_off_case, fused_loss, make_case, naive_loss, parameters


@pytest.mark.parametrize("resolution", [64, 128])
def test_fused_and_naive_steps_agree(resolution):
    case = make_case(resolution)
    fused, fused_values = fused_loss(case)
    fused.backward()
    fused_grads = [p.grad.clone() for p in parameters(case)]
    for p in parameters(case):
        p.grad = None
    naive, naive_values = naive_loss(case)
    naive.backward()
    for name in ("con", "att", "roi", "total"):
        assert fused_values[name] == pytest.approx(naive_values[name], rel=1e-5), name
    for fused_grad, p in zip(fused_grads, parameters(case)):
        torch.testing.assert_close(fused_grad, p.grad, rtol=1e-4, atol=1e-7)


def test_capture_keeps_only_the_requested_columns():
    case = make_case(64)
    fused_loss(case)  # the step clears the buffer at its end; run the forward part again to look at it
    state = case.state
    from clic.learn import encode_text

    text, ids = encode_text(state.components, ["A chair with <v*> style"])
    state.capture.set_tokens(state.tokens.positions(ids))
    state.components.unet(case.batch.latents, case.batch.timestep, encoder_hidden_states=text)
    for name, recorded in state.capture.maps().items():
        assert recorded.shape[0] == 1 and recorded.shape[2] == 1, name  # (B, pixels, n_tokens=1)
    assert set(state.capture.maps()) == set(state.capture.capture_layers)


def test_capture_off_records_nothing():
    case = capture_off_case(64)
    loss, values = fused_loss(case)
    assert "att" not in values and case.state.capture.maps() == {}
