"""`clic-bench perf --arch sd15`: the steps section on the real SD 1.5 architecture (random weights).

The fast tests build the architecture on the data-less ``meta`` device (a second, no memory) and pin its layer
structure, the counting method (saved-tensor bytes with the resident weights left out; flash attention's
O(pixels) saves on meta) and the argument. The slow one builds it for real at 64 px (~4 GB, ~40 s) and pins
that the meta count of the saved bytes equals the measured one, which is what the 512 px figures rest on.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from benchmarks.perf.learning import activation_megabytes
from benchmarks.perf.real_size import cross_attention_layers, flash_attention_on_meta, meta_counts, unet_parameters
from benchmarks.perf.steps import fused_loss, make_case, naive_loss
from harness.cli import build_parser

pytestmark = pytest.mark.filterwarnings("ignore:for .*copying from a non-meta parameter")


def test_perf_takes_an_architecture_and_defaults_to_tiny():
    parser = build_parser()
    assert parser.parse_args(["perf", "--arch", "sd15"]).arch == "sd15"
    assert parser.parse_args(["perf"]).arch == "tiny"
    with pytest.raises(SystemExit):
        parser.parse_args(["perf", "--arch", "sd3"])


def test_the_sd15_case_has_the_sd15_layer_structure():
    case = make_case(128, arch="sd15", device="meta")
    unet = case.state.components.unet
    # runwayml/stable-diffusion-v1-5 unet/config.json: 859,520,964 parameters; 16 transformer blocks, each with
    # one self- (attn1) and one cross-attention (attn2) layer; CLIP ViT-L/14 text width 768; 12 text layers.
    assert unet_parameters(case) == 859_520_964
    assert cross_attention_layers(case) == 16
    assert sum(1 for name in unet.attn_processors if "attn1" in name) == 16
    assert unet.config.cross_attention_dim == 768 and unet.config.block_out_channels == (320, 640, 1280, 1280)
    assert case.state.components.text_encoder.config.num_hidden_layers == 12
    # l_att reads the up-block maps at their coarsest side: latent / 4 (4 cells at 128 px; 16 at 512 px, the paper's)
    assert case.batch.latents.shape == (1, 4, 16, 16)
    assert case.state.attention_resolution == 4
    assert make_case(512, arch="sd15", device="meta").state.attention_resolution == 16


def test_saved_bytes_leave_out_the_resident_weights():
    """y = W x (W frozen, x trained) then y²: autograd keeps W (for x's gradient) and y (for the square);
    W is resident anyway, so only y's 4 × 1000 bytes count."""
    torch.manual_seed(0)
    layer = torch.nn.Linear(1000, 1000, bias=False).requires_grad_(False)
    token = torch.nn.Parameter(torch.randn(1, 1000))
    components = SimpleNamespace(unet=layer, text_encoder=torch.nn.Identity(), vae=torch.nn.Identity())
    case = SimpleNamespace(state=SimpleNamespace(components=components, tokens=SimpleNamespace(parameter=token)))
    step = lambda c: ((c.state.components.unet(c.state.tokens.parameter) ** 2).sum(), {})  # noqa: E731
    assert activation_megabytes(step, case) * 2**20 == 1000 * 4
    assert token.grad is not None  # the backward pass ran


def test_flash_attention_on_meta_saves_what_the_cpu_kernel_saves():
    """Math attention keeps the (B, heads, L, L) probabilities; the CPU flash kernel (and a GPU's) keeps q, k, v,
    the output and one log-sum-exp per query. On meta the patch gives the latter, as the CPU does."""
    batch, heads, length, dim = 1, 8, 1024, 40

    def saved_bytes(device: str) -> int:
        q = torch.randn(batch, heads, length, dim, device=device, requires_grad=True)
        storages: dict[int, int] = {}
        with torch.autograd.graph.saved_tensors_hooks(
            lambda t: storages.setdefault(t.untyped_storage()._cdata, t.untyped_storage().nbytes()) and t, lambda t: t
        ):
            out = torch.nn.functional.scaled_dot_product_attention(q, q * 1.0, q * 1.0)
        out.sum().backward()
        return sum(storages.values())

    with flash_attention_on_meta():
        flash_meta = saved_bytes("meta")
    flash_cpu = saved_bytes("cpu")
    linear = 4 * (4 * batch * heads * length * dim + batch * heads * length)  # q, k, v, out; log-sum-exp (fp32)
    assert flash_meta == flash_cpu == linear
    assert saved_bytes("meta") >= 4 * batch * heads * length * length  # unpatched meta: the math path


@pytest.mark.slow  # builds SD 1.5 for real: ~4 GB, ~40 s
def test_the_meta_count_is_the_measured_count_at_64_px():
    case = make_case(64, arch="sd15")
    fused, fused_values = fused_loss(case)
    naive, naive_values = naive_loss(case)
    for name in ("con", "att", "roi", "total"):
        assert fused_values[name] == pytest.approx(naive_values[name], rel=1e-5), name
    from benchmarks.perf.real_size import naive_with_store

    measured = {
        "fused": activation_megabytes(fused_loss, case),
        "naive": activation_megabytes(naive_with_store(), case),
    }
    counted = meta_counts("sd15", 64)
    assert counted["fused_activation_mb"] == pytest.approx(measured["fused"], rel=1e-6)
    assert counted["naive_activation_mb"] == pytest.approx(measured["naive"], rel=1e-6)


def test_the_naive_store_at_512_px_is_every_attention_probability_of_both_passes():
    """Reference: SD 1.5 at 512 px has 64×64 latents; its 16 transformer blocks sit at L = 64², 32², 16² query
    pixels (2 down + 3 up each) and 8² (mid), 8 heads each (attention_head_dim 8 is the head count in
    diffusers' SD 1.x config). Each keeps an fp32 (8, L, L) self- and (8, L, 77) cross-attention probability
    tensor per UNet pass; the naive step makes two passes (context, RoI)."""
    from benchmarks.perf.placement import DeviceAudit
    from benchmarks.perf.real_size import naive_with_store

    layers_at = {64 * 64: 5, 32 * 32: 5, 16 * 16: 5, 8 * 8: 1}
    expected = 2 * 4 * 8 * sum(n * pixels * (pixels + 77) for pixels, n in layers_at.items())
    case = make_case(512, arch="sd15", device="meta")
    stored: list[float] = []
    with DeviceAudit():
        naive_with_store(stored)(case)
    assert stored[-1] * 2**20 == expected


def test_the_perf_table_names_architecture_resolution_and_random_weights():
    from benchmarks.perf.__main__ import to_markdown

    measured = {
        "arch": "sd15",
        "resolution": 128,
        "fused_ms": 4000.0,
        "naive_ms": 5000.0,
        "speedup": 1.25,
        "max_rel_loss_diff": 0.0,
        "fused_activation_mb": 267.7,
        "naive_activation_mb": 280.7,
        "fused_gflops": 241.3,
        "naive_gflops": 241.3,
        "meta_fused_activation_mb": 267.7,
        "meta_naive_activation_mb": 280.7,
        "fused_gflops_per_s": 60.3,
        "naive_gflops_per_s": 48.3,
    }
    counted = {
        "resolution": 512,
        "fused_gflops": 3397.9,
        "naive_gflops": 3397.9,
        "naive_store_mb": 5586.9,
        "fused_activation_mb": 2910.1,
        "naive_activation_mb": 7281.1,
        "unet_parameters": 859_520_964,
        "cross_attention_layers": 16,
    }
    results = {
        "host": "h",
        "python": "3",
        "quick": False,
        "seconds": 1.0,
        "arch": "sd15",
        "real_size": {
            "arch": "sd15",
            "weights": "random (seed 0)",
            "threads": 2,
            "measured": [measured],
            "counted_at_target": counted,
            "load_average": (1.0, 1.0),
        },
    }
    table = to_markdown(results)
    rows = [line for line in table.splitlines() if line.startswith("| sd15")]
    assert rows and all("random weights" in row or "counted on meta" in row for row in rows)
    assert any(row.startswith("| sd15 (random weights), 128 px: fused step, s | 4 |") for row in rows)
    assert any(row.startswith("| sd15, 512 px, counted on meta") for row in rows)
    assert "sd15 (random weights): fused vs naive loss, max relative difference | 0 | <= 1e-05: met" in table
