"""Placement: every tensor a learning, transfer or match step creates lives where the model lives.

There is no GPU here, so the model goes to PyTorch's ``meta`` device, a real second device whose tensors carry
shapes and dtypes but no data. A tensor ``clic/`` creates on the CPU and then combines with the model's tensors
is an op with inputs on two devices; :class:`DeviceAudit` (a ``TorchDispatchMode``, it sees every aten op)
records each such op. Two things a data-less device cannot do are answered by the audit and are not placement
errors: reading a scalar out of a meta tensor (the loops read loss values to log them) gives 1, and copying a
meta tensor to the CPU (results are returned on the CPU) gives zeros of the right shape. Transfers themselves
(``.to(device)``) are what correct code does and are not recorded; a 0-dim CPU tensor is a scalar that
PyTorch accepts beside any device and is not recorded either.

On the code before the fix these tests failed: the attention processors' fp32 copies were made on the CPU and
filled from the model's weights (copying out of the meta device), the learning loop built a GradScaler for the
model's device even in fp32, and the token slot buffer stayed on the CPU while being indexed with the model's
token ids (recorded by the audit: ``aten.index.Tensor: ['cpu', 'meta']``).

Seeded draws: a CPU generator used with ``device=`` of the model, or a generator made on the model's device,
raises on ``meta``; so these tests also pin that every draw is made on the CPU and then moved.
"""

from __future__ import annotations

import pytest
import torch

from benchmarks.perf.placement import DeviceAudit
from clic.learn import ConceptSource
from clic.match import MatchSettings, match_region
from clic.methods.base import get_method
from clic.models import build_tiny
from clic.transfer import TransferSettings, transfer_concept

# A concept's weights loaded onto a data-less model are a no-op there, as torch warns: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")


def source() -> ConceptSource:
    generator = torch.Generator().manual_seed(0)
    mask = torch.zeros(64, 64)
    mask[8:40, 16:48] = 1
    return ConceptSource(torch.rand(3, 64, 64, generator=generator) * 2 - 1, mask, "chair")


def on_meta():
    return build_tiny().to("meta")


def audited(run) -> DeviceAudit:
    audit = DeviceAudit()
    with audit:
        run()
    assert audit.ops > 1000  # the loops really ran under the audit
    return audit


def test_the_audit_sees_a_cpu_tensor_meeting_a_meta_tensor():
    """The audit itself: a CPU tensor added to a meta one is recorded; a transfer and a CPU scalar are not."""
    audit = DeviceAudit()
    with audit:
        meta = torch.zeros(3, device="meta")
        _ = meta * torch.tensor(2.0)  # 0-dim CPU scalar: allowed
        _ = meta + torch.ones(3).to("meta")  # moved first: allowed
        assert audit.mixed == []
        try:
            _ = meta + torch.ones(3)
        except (RuntimeError, NotImplementedError):
            pass  # the meta kernel may refuse it too; the audit saw it first
    assert len(audit.mixed) == 1 and "cpu" in audit.mixed[0] and "meta" in audit.mixed[0]


def test_learning_steps_create_nothing_off_the_model_device():
    components = on_meta()
    audit = audited(lambda: get_method("clic").learn(components, source(), overrides={"steps": 2}, progress=False))
    assert audit.mixed == []


def test_transfer_steps_create_nothing_off_the_model_device():
    concept = get_method("clic").learn(build_tiny(), source(), overrides={"steps": 1}, progress=False)
    components = on_meta()
    target = source()
    settings = TransferSettings(steps=4, t_start=2, eta=1.0)
    audit = audited(lambda: transfer_concept(components, concept, target.image, target.masks[0], "chair", settings))
    assert audit.mixed == []


def test_match_steps_create_nothing_off_the_model_device():
    concept = get_method("clic").learn(build_tiny(), source(), overrides={"steps": 1}, progress=False)
    components = on_meta()
    settings = MatchSettings(steps=2, denoise_steps=4, read_steps=2)
    audit = audited(lambda: match_region(components, concept, source().image, "chair", settings))
    assert audit.mixed == []


def test_generation_creates_nothing_off_the_model_device():
    from clic.generate import GenerateSettings, generate_with_concept

    concept = get_method("clic").learn(build_tiny(), source(), overrides={"steps": 1}, progress=False)
    components = on_meta()
    audit = audited(
        lambda: generate_with_concept(components, concept, "chair", GenerateSettings(steps=3, stage_one_steps=1))
    )
    assert audit.mixed == []
