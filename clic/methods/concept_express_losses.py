"""ConceptExpress's two extra loss terms (released code github haoosz/ConceptExpress): the entropic-OT alignment of
a token's cross-attention with its concept's self-attention feature, and the supervised contrast of split tokens.
Part of :mod:`clic.methods.concept_express`, which re-exports these names."""

from __future__ import annotations

import math

import torch


class _SinkhornTransport(torch.autograd.Function):
    """Entropic OT cost Σ P_ij C_ij (log-domain Sinkhorn) with emd/emd.py's gradient: λ·log v for ν."""

    @staticmethod
    def forward(ctx, mu: torch.Tensor, nu: torch.Tensor, cost: torch.Tensor, epsilon: float, iterations: int):
        log_mu, log_nu = mu.clamp_min(1e-30).log(), nu.clamp_min(1e-30).log()
        log_u = torch.full_like(mu, -math.log(mu.numel()))
        log_v = torch.full_like(nu, -math.log(nu.numel()))
        kernel = -cost / epsilon
        for _ in range(iterations):
            log_v = log_nu - torch.logsumexp(kernel + log_u[:, None], dim=0)
            log_u = log_mu - torch.logsumexp(kernel + log_v[None, :], dim=1)
        plan = (log_u[:, None] + kernel + log_v[None, :]).exp()
        ctx.save_for_backward(log_u, log_v)
        ctx.epsilon = epsilon
        return (plan * cost).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        log_u, log_v = ctx.saved_tensors
        return grad * log_u * ctx.epsilon, grad * log_v * ctx.epsilon, None, None, None


def grid_cost(side: int) -> torch.Tensor:
    """Euclidean distance between the cells of a side × side grid (ot.dist(grid, metric='euclidean'))."""
    ys, xs = torch.meshgrid(
        torch.arange(side, dtype=torch.float32), torch.arange(side, dtype=torch.float32), indexing="ij"
    )
    grid = torch.stack([ys.flatten(), xs.flatten()], 1)
    return torch.cdist(grid, grid)


def wasserstein_alignment(
    target: torch.Tensor, attention: torch.Tensor, epsilon: float = 1e-3, iterations: int = 200
) -> torch.Tensor:
    """ptp_utils.wasser_loss: both (s, s) maps normalised to mass 1, OT cost from the feature to the attention."""
    side = target.shape[-1]
    mu = (target / target.sum()).flatten().float()
    nu = (attention / attention.sum()).flatten().float()
    return _SinkhornTransport.apply(mu, nu, grid_cost(side).to(mu.device), epsilon, iterations)


def supervised_contrastive(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """utils/loss.py SupConLoss (one view, contrast_mode 'one', base temperature = temperature) on unit rows."""
    logits = features @ features.T / temperature
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    others = ~torch.eye(len(labels), dtype=torch.bool, device=features.device)
    positives = (labels[:, None] == labels[None, :]) & others
    log_prob = logits - torch.log((logits.exp() * others).sum(1, keepdim=True))
    return -((positives * log_prob).sum(1) / positives.sum(1).clamp_min(1)).mean()
