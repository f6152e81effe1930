"""Evaluations on stored models through their ONNX graphs (no torch): ELBO surgery and MIG.

ELBO surgery (Hoffman & Johnson, 2016). Over a data set {x_n}, n = 1..N, the averaged
beta-weighted ELBO splits as

    mean_n ELBO_beta(x_n) = reconstruction - beta * (I_q[x, z] + KL(q(z) || p(z)))

with reconstruction = mean_n E_q(z|x_n) log p(x_n|z), the aggregate posterior
q(z) = (1/N) sum_m q(z|x_m), the index-code mutual information
I_q = mean_n E_q(z|x_n) [log q(z|x_n) - log q(z)], and the marginal KL
KL(q(z)||p(z)) = E_q(z) [log q(z) - log p(z)].

Estimator: S draws z ~ q(z|x_n) per point; log q(z) by log-sum-exp over all N encoder
Gaussians of the data set (the full data set as the mixture, the point's own component
included, so I_q <= log N). The averaged KL(q(z|x_n)||p(z)) is also computed in closed form;
I_q + marginal KL must match it within Monte-Carlo error, which the result reports.

The marginal KL splits once more (Chen et al. 2018, beta-TCVAE) into the total correlation
TC = KL(q(z) || prod_j q(z_j)), zero when the aggregate posterior's dimensions are independent,
and the dimension-wise KL sum_j KL(q(z_j) || p(z_j)), each q(z_j) the mixture of the encoder
Gaussians' j-th marginals. A model trained with ``penalty=tc`` weighed only TC by beta: its
objective is reconstruction - (I_q + beta * TC + dimension-wise KL), reported as ``elbo_beta``
with TC from the exact mixture over the evaluated rows: training's minibatch-weighted estimate
of it is biased at small batches, so its loss is not this number.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from registry.runtime import latent
from registry.runtime.models import LoadedModel

LOG_2PI = math.log(2 * math.pi)
# Rows of z per chunk of the aggregate posterior: the per-dimension log-sum-exp holds about three
# (rows, N, latent) float64 arrays at once (2,000 points at latent 64: 131 MB each at 128 rows).
SURGERY_CHUNK = 128


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = a.max(axis, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(axis, keepdims=True))).squeeze(axis)


def encode(loaded: LoadedModel, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    spec = loaded.stored.graph("encoder")
    if spec is None or spec.kind not in (None, "gaussian"):
        raise ValueError(
            f"{loaded.stored.tag} has no encoder graph of q(z|x) (only latent-variable models do; "
            "a flow's encoder is its exact transform)"
        )
    if spec.kind == "gaussian":  # the served encoder: the one latent path
        encoded = latent.encode(loaded, latent.check_encode(loaded, x, None), seed=0)
        return encoded.mean.astype(np.float64), encoded.log_var.astype(np.float64)
    # Stored before the latent space was served: the same graph, its output not yet described.
    stats = loaded.run(spec, {"x": np.ascontiguousarray(x, dtype=np.float32)}).astype(np.float64)
    width = stats.shape[1] // 2
    return stats[:, :width], stats[:, width:]


def _decoder_params(loaded: LoadedModel):
    """The decoder graph of p(x|z)'s parameters: of kind ``params``, or, stored before the
    decoders had kinds, the one decoder graph; None where the model serves none."""
    spec = loaded.stored.graph("decoder", "params")
    if spec is None and all(g.kind is None for g in loaded.stored.graphs if g.role == "decoder"):
        spec = loaded.stored.graph("decoder")
    return spec


def _log_lik(
    loaded: LoadedModel, x: np.ndarray, z: np.ndarray, eps: np.ndarray, log_var: np.ndarray
) -> np.ndarray:
    """log p(x|z) per row, z = mean + exp(log_var / 2) * eps, from the decoder graph's
    distribution parameters; without one, from the scorer's log importance weight at the same
    draw, log p(x|z) + log p(z) - log q(z|x), less its two latent terms. A decoder may leave its
    parameters out: a discretised logistic's per-level table at 32x32x3 and 256 levels would be
    786k numbers a row."""
    spec = _decoder_params(loaded)
    if spec is None:
        scorer = loaded.stored.graph("scorer")
        assert scorer is not None and len(scorer.noise) == 1, "a VAE's scorer takes one normal draw"
        feeds = {"x": np.ascontiguousarray(x, dtype=np.float32), scorer.noise[0].name: eps.astype(np.float32)}
        log_w = loaded.run(scorer, feeds).astype(np.float64)
        log_prior = (-0.5 * (LOG_2PI + z**2)).sum(1)
        log_post = (-0.5 * (LOG_2PI + log_var + eps**2)).sum(1)
        return log_w - log_prior + log_post
    params = loaded.run(spec, {"z": z.astype(np.float32)}).astype(np.float64)
    if loaded.stored.data.get("levels"):
        idx = x.astype(np.int64)[..., None]
        return np.take_along_axis(params, idx, axis=-1)[..., 0].sum(-1)
    mean, log_var = np.split(params, 2, axis=-1)
    return (-0.5 * (LOG_2PI + log_var + (x - mean) ** 2 * np.exp(-log_var))).sum(-1)


def elbo_surgery(loaded: LoadedModel, x: np.ndarray, *, draws: int = 4, seed: int = 0) -> dict[str, Any]:
    beta = float(loaded.stored.meta["config"].get("beta", 1.0))
    rng = np.random.default_rng(seed)
    mean, log_var = encode(loaded, x)
    n = len(mean)
    var = np.exp(log_var)
    kl_closed = 0.5 * (mean**2 + var - 1.0 - log_var).sum(1)
    config = loaded.stored.meta["config"]
    tc_weighted = config.get("penalty", "kl") == "tc"
    rec, log_q_cond, log_q_agg, log_q_dims, log_prior = [], [], [], [], []
    for _ in range(draws):
        eps = rng.standard_normal(mean.shape)
        z = mean + np.sqrt(var) * eps
        rec.append(_log_lik(loaded, x, z, eps, log_var))
        log_q_cond.append((-0.5 * (LOG_2PI + log_var + (z - mean) ** 2 / var)).sum(1))
        log_prior.append((-0.5 * (LOG_2PI + z**2)).sum(1))
        # log q(z_n) = logsumexp_m log q(z_n | x_m) - log N, and each dimension's log q(z_nj)
        # the same way over its marginals, in chunks to bound memory.
        agg, dims = np.empty(n), np.empty(n)
        for start in range(0, n, SURGERY_CHUNK):
            rows = slice(start, start + SURGERY_CHUNK)
            comp = -0.5 * (LOG_2PI + log_var[None] + (z[rows, None, :] - mean[None]) ** 2 / var[None])
            agg[rows] = _logsumexp(comp.sum(-1), axis=1) - math.log(n)
            dims[rows] = (_logsumexp(comp, axis=1) - math.log(n)).sum(-1)
        log_q_agg.append(agg)
        log_q_dims.append(dims)
    rec_a, cond, agg_a, dims_a, prior = map(
        np.concatenate, (rec, log_q_cond, log_q_agg, log_q_dims, log_prior)
    )
    mutual_info = cond - agg_a
    marginal_kl = agg_a - prior
    total_correlation = float((agg_a - dims_a).mean())
    dimension_kl = float((dims_a - prior).mean())
    reconstruction = float(rec_a.mean())
    kl_avg = float(kl_closed.mean())
    if tc_weighted:
        # I_q + TC + dimension-wise KL is the averaged KL: beta adds (beta - 1) TC to it.
        elbo_beta = reconstruction - kl_avg - (beta - 1.0) * total_correlation
        parts_sum = reconstruction - float(mutual_info.mean()) - dimension_kl - beta * total_correlation
        mc_error = float((cond - prior).std() / math.sqrt(len(cond)))
    else:
        elbo_beta = reconstruction - beta * kl_avg
        parts_sum = reconstruction - beta * float(mutual_info.mean() + marginal_kl.mean())
        mc_error = beta * float((cond - prior).std() / math.sqrt(len(cond)))
    return {
        "n": int(n),
        "draws": draws,
        "beta": beta,
        "reconstruction": reconstruction,
        "mutual_information": float(mutual_info.mean()),
        "marginal_kl": float(marginal_kl.mean()),
        "total_correlation": total_correlation,
        "dimension_kl": dimension_kl,
        "penalty": "tc" if tc_weighted else "kl",
        "kl_posterior_prior": kl_avg,
        "elbo_beta": elbo_beta,
        "elbo": reconstruction - kl_avg,
        "sum_of_terms": parts_sum,
        "sum_minus_elbo_beta": parts_sum - elbo_beta,
        "monte_carlo_stderr": mc_error,
        "log_n": math.log(n),
    }


def _discretise(values: np.ndarray, bins: int) -> np.ndarray:
    edges = np.histogram_bin_edges(values, bins=bins)
    return np.clip(np.digitize(values, edges[1:-1]), 0, bins - 1)


def _mutual_info(a: np.ndarray, b: np.ndarray) -> float:
    """Mutual information (nats) of two integer label arrays from their contingency table."""
    joint = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(joint, (a, b), 1.0)
    joint /= joint.sum()
    pa, pb = joint.sum(1, keepdims=True), joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(joint[nz] / (pa @ pb)[nz])).sum())


def mig(codes: np.ndarray, factors: np.ndarray, bins: int = 20) -> dict[str, Any]:
    """Mutual information gap (Chen et al., 2018) of latent codes (encoder means) vs factors.

    For each factor v_k: the gap between the two latents most informative about it, divided
    by H(v_k); MIG is the mean over factors. Latents are discretised into ``bins`` bins.
    """
    disc = np.stack([_discretise(codes[:, j], bins) for j in range(codes.shape[1])], 1)
    gaps = []
    for k in range(factors.shape[1]):
        v = factors[:, k]
        entropy = _mutual_info(v, v)
        mis = sorted((_mutual_info(disc[:, j], v) for j in range(disc.shape[1])), reverse=True)
        second = mis[1] if len(mis) > 1 else 0.0
        gaps.append((mis[0] - second) / entropy)
    return {"mig": float(np.mean(gaps)), "per_factor": [float(g) for g in gaps]}
