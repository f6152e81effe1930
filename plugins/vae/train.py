"""Training the VAE: maximise E_q log p(x|z) - beta KL(q(z|x) || p(z)) (analytic KL).

With ``penalty=tc`` (beta-TCVAE) beta weighs only the total correlation of the aggregate
posterior, estimated on each minibatch (:func:`penalised_kl`); the rest of the KL keeps weight 1.

On labelled data the same objective given each row's label, E_q log p(x|z,y) - beta KL(q(z|x,y) ||
p(z)): a conditional VAE. The labels travel as one more column of the training tensor, so that
the shared minibatch loop (and its data-parallel split) keeps every label with its row."""

from __future__ import annotations

import math

import torch

from plugins.common.training import data_parallel_world, fit_config, pick_device, split_labels, with_labels
from plugins.vae.config import IMAGE_ARCHS, VAEConfig, VAEModel
from plugins.vae.likelihood import Categorical, Gaussian, Likelihood, Logistic, normal_log_density
from plugins.vae.local import LocalLogistic
from plugins.vae.model import VAE
from registry.contract.dataset import Dataset
from registry.contract.family import TrainControl


def kl_to_prior(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)) per row."""
    return 0.5 * (mean**2 + torch.exp(log_var) - 1.0 - log_var).sum(-1)


def penalised_kl(
    z: torch.Tensor,
    mean: torch.Tensor,
    log_var: torch.Tensor,
    beta: float,
    dataset_size: int | None,
    chunk: int = 256,
) -> torch.Tensor:
    """beta-TCVAE's penalty per row, I_q[x,z] + beta TC(q(z)) + sum_j KL(q(z_j)||p(z_j)), taken as
    KL(q(z|x)||p(z)) in closed form plus (beta - 1) TC: the three terms sum to that KL, so this
    has the expectation of the paper's form (all three estimated at the draw z) with less
    variance, and at beta = 1 it is the plain VAE's penalty exactly. Measured on shapes (beta 4,
    broadcast, two seeds): MIG 0.905 and 0.904 against 0.849 and 0.864 for the sampled form.

    TC = log q(z) - sum_j log q(z_j) at the draw, the aggregate posterior q(z) and its marginals
    estimated on the minibatch by minibatch-weighted sampling (Chen et al. 2018): log q(z_n) ~
    logsumexp_m log q(z_n|x_m) - log(N M), for a batch of M rows out of N; ``dataset_size`` None:
    the rows are the whole data set, and the mixture is exact, logsumexp_m log q(z_n|x_m) - log M.

    Each row meets every row's Gaussians. Without gradients (validation) ``chunk`` rows at a time
    hold chunk x M x latent values; in training autograd keeps every chunk for the backward pass,
    so a step holds batch x batch x latent values (batch 4,096 at latent 64: 4 GiB in float32)."""
    norm = math.log((dataset_size or 1) * len(z))
    total_correlation = []
    for start in range(0, len(z), chunk):
        pairs = normal_log_density(
            z[start : start + chunk, None, :], mean[None], log_var[None]
        )  # (c, m, latent)
        joint = torch.logsumexp(pairs.sum(-1), dim=1) - norm
        marginals = (torch.logsumexp(pairs, dim=1) - norm).sum(-1)
        total_correlation.append(joint - marginals)
    return kl_to_prior(mean, log_var) + (beta - 1.0) * torch.cat(total_correlation)


def likelihood_of(
    config: VAEConfig, levels: int | None, shape: tuple[int, int, int] | None = None
) -> Likelihood:
    """p(x|z)'s family for a resolved config (VAEConfig.resolve checked it fits the data)."""
    if config.decoder == "local":
        assert levels is not None and shape is not None
        return LocalLogistic(levels, shape, config.components)
    if config.decoder == "categorical":
        assert levels is not None
        return Categorical(levels)
    if config.decoder == "logistic":
        assert levels is not None
        return Logistic(levels, config.components)
    return Gaussian()


def build(data: Dataset, config: VAEConfig) -> VAE:
    """The untrained VAE of a resolved config on ``data``, normalised to its training split."""
    assert config.latent is not None and config.channels is not None and config.blocks is not None
    classes = (data.classes or 0) if data.labels is not None else 0
    vae = VAE(
        data.dim,
        likelihood_of(config, data.levels, data.image_shape),
        config.latent,
        config.hidden,
        config.depth,
        conv_shape=data.image_shape if config.arch in IMAGE_ARCHS else None,
        classes=classes,
        channels=config.channels,
        blocks=config.blocks,
        broadcast=config.arch == "broadcast",
    )
    train = torch.as_tensor(data.train, dtype=torch.float32)
    vae.mean.copy_(train.mean(0))
    vae.std.copy_(train.std(0) + 1e-3 if not data.levels else torch.full((data.dim,), data.levels / 4.0))
    return vae


def train_vae(data: Dataset, config: VAEConfig, control: TrainControl) -> VAEModel:
    """Fit a VAE of a resolved config (VAEConfig.resolve) to ``data``."""
    if config.penalty == "tc" and data_parallel_world()[1] > 1:
        # Each rank would estimate q(z) on its own share of the batch: not the objective one
        # process takes with the same global batch, which is what --nproc promises.
        raise ValueError(
            "penalty=tc estimates the aggregate posterior on the whole minibatch; with --nproc above 1 "
            "each process sees a share of it: train a tc model with --nproc 1"
        )
    device = pick_device(control)
    torch.manual_seed(control.seed)
    labelled = data.labels is not None
    vae = build(data, config)
    train = torch.as_tensor(data.train, dtype=torch.float32)
    vae.to(device)
    val = torch.as_tensor(data.validation, dtype=torch.float32, device=device)
    val_y = None
    if labelled:
        assert data.labels is not None
        # Labels (small integers, exact in float32) as the last column; split off in the loss.
        train = with_labels(train, data.labels["train"])
        val_y = torch.as_tensor(data.labels["validation"], dtype=torch.int64, device=device)[:, None]
    train = train.to(device)
    nats_to_bpd = 1.0 / (data.dim * math.log(2))
    val_eps = torch.randn(
        len(val), config.latent, generator=torch.Generator().manual_seed(control.seed + 1)
    ).to(device)

    def loss_fn(batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        batch, y = split_labels(batch, data.dim)
        mean, log_var = vae.encode(batch, y)
        eps = torch.randn(mean.shape, generator=generator).to(device)
        z = mean + torch.exp(0.5 * log_var) * eps
        rec = vae.log_likelihood(batch, vae.params(z, y))
        return -(rec - penalty(z, mean, log_var, len(train))).mean() * nats_to_bpd

    def penalty(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, size: int | None) -> torch.Tensor:
        if config.penalty == "tc":
            return penalised_kl(z, mean, log_var, config.beta, size)
        return config.beta * kl_to_prior(mean, log_var)

    def validate() -> float:
        # The beta-weighted objective picks the best epoch: it is what training optimises (the
        # total correlation's estimate on the whole validation split, M = N).
        with torch.no_grad():
            mean, log_var = vae.encode(val, val_y)
            z = mean + torch.exp(0.5 * log_var) * val_eps
            rec = vae.log_likelihood(val, vae.params(z, val_y))
            return float(-(rec - penalty(z, mean, log_var, None)).mean() * nats_to_bpd)

    result = fit_config(vae, train, config, loss_fn=loss_fn, validate=validate, control=control)
    vae.cpu().eval()
    return VAEModel(config, vae, data.dim, data.levels, fit=result.__dict__)
