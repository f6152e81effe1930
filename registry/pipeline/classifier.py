"""A classifier between real rows and model samples: the likelihood-free critic of any model.

Trained with the logistic loss, its logit estimates log pi(x)/p(x) (the optimal discriminator
is D*(x) = pi(x) / (pi(x) + p(x))); its held-out accuracy and AUC are a classifier two-sample
test, and its value V = E_pi log D + E_p log(1 - D) gives JSD(pi || p) >= (V + log 4) / 2.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class Critic(nn.Module):
    """Logit of "real" for rows in data units (standardised inside, so it exports as is)."""

    def __init__(self, dim: int, hidden: int = 128, depth: int = 2) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.SiLU()]
            width = hidden
        layers.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*layers)
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std).squeeze(-1)


def train_critic(
    real: np.ndarray,
    fake: np.ndarray,
    *,
    steps: int = 2000,
    batch_size: int = 512,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    hidden: int = 128,
    depth: int = 2,
    seed: int = 0,
    holdout: float = 0.0,
) -> Critic:
    """Fit a balanced logistic classifier, real = 1, fake = 0, with cosine-decayed AdamW.

    With ``holdout`` > 0 that share of each sample is kept aside and the weights with the best
    held-out logistic loss (checked every 50 steps) are returned: on a few hundred real rows an
    unchecked critic becomes overconfident, and its value V (hence the JSD bound) collapses.
    """
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    xr = torch.as_tensor(real, dtype=torch.float32)
    xf = torch.as_tensor(fake, dtype=torch.float32)
    hold_r = hold_f = None
    if holdout > 0:
        kr, kf = max(1, int(len(xr) * holdout)), max(1, int(len(xf) * holdout))
        pr, pf = torch.randperm(len(xr), generator=gen), torch.randperm(len(xf), generator=gen)
        hold_r, xr = xr[pr[:kr]], xr[pr[kr:]]
        hold_f, xf = xf[pf[:kf]], xf[pf[kf:]]
    critic = Critic(xr.shape[1], hidden, depth)
    pooled = torch.cat([xr, xf])
    critic.mean.copy_(pooled.mean(0))
    # Floor each scale at a tenth of the typical one: a pixel that is constant in the fit data
    # (digit borders) would otherwise turn float noise into huge, unportable logits.
    std = pooled.std(0)
    critic.std.copy_(torch.maximum(std, 0.1 * std.mean()) + 1e-6)
    opt = torch.optim.AdamW(critic.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    half = batch_size // 2
    best = (float("inf"), None)
    critic.train()
    for step in range(steps):
        br = xr[torch.randint(len(xr), (half,), generator=gen)]
        bf = xf[torch.randint(len(xf), (half,), generator=gen)]
        loss = F.softplus(-critic(br)).mean() + F.softplus(critic(bf)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if hold_r is not None and (step % 50 == 49 or step == steps - 1):
            critic.eval()
            with torch.no_grad():
                held = float(F.softplus(-critic(hold_r)).mean() + F.softplus(critic(hold_f)).mean())
            if held < best[0]:
                best = (held, {k: v.clone() for k, v in critic.state_dict().items()})
            critic.train()
    if best[1] is not None:
        critic.load_state_dict(best[1])
    return critic.eval()


def critic_logits(critic: Critic, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return critic(torch.as_tensor(x, dtype=torch.float32)).double().numpy()


def value(logit_real: np.ndarray, logit_fake: np.ndarray) -> float:
    """V = E_pi log D(x) + E_p log(1 - D(x)) with D = sigmoid(logit)."""
    return float(-np.logaddexp(0, -logit_real).mean() - np.logaddexp(0, logit_fake).mean())


__all__ = ["Critic", "critic_logits", "train_critic", "value"]
