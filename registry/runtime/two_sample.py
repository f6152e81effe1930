"""Likelihood-free checks: MMD and classifier two-sample tests, in numpy (serving-safe).

MMD: the unbiased estimate of MMD^2 with a Gaussian kernel whose bandwidth is the median
pairwise distance of the pooled sample (median heuristic); p-value from a permutation null.
C2ST: a k-nearest-neighbour classifier trained on half of the pooled, labelled sample and
tested on the other half; under the null its accuracy is Binomial(n_test, 1/2) / n_test.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from registry.runtime.budget import checkpoint


def _sq_dists(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # The same operations as (a*a).sum(1)[:, None] + (b*b).sum(1)[None, :] - 2.0 * a @ b.T, in
    # place: two (len(a), len(b)) matrices at the peak instead of four.
    d = np.add((a * a).sum(1)[:, None], (b * b).sum(1)[None, :])
    g = a @ b.T
    g *= 2.0
    d -= g
    del g
    return np.maximum(d, 0.0, out=d)


def _off_diagonal_median(d2: np.ndarray) -> float:
    """The median of the entries above the diagonal of a symmetric matrix, with one copy of it.

    Every off-diagonal value appears twice, so the sorted off-diagonal entries are each value
    twice over and their median is the upper triangle's; the diagonal is set to +inf in the
    copy, so it sorts past the ranks the median reads."""
    n = len(d2)
    flat = d2.copy().reshape(-1)
    flat[:: n + 1] = np.inf
    m = n * (n - 1)  # off-diagonal entries, all below the n infinities
    lo, hi = m // 2 - 1, m // 2
    flat.partition((lo, hi))
    return float((flat[lo] + flat[hi]) / 2.0)


# Permutations of the MMD null evaluated together: their memberships and kernel products take
# about 65 bytes a pooled row each, so the null's memory does not grow with ``permutations``.
PERMUTATION_CHUNK = 32


def mmd_bytes(n_x: int, n_y: int, dim: int, permutations: int) -> int:
    """Peak working memory of :func:`mmd_test` over n_x + n_y rows ``dim`` wide (float64), its
    inputs aside: the pooled copy with one squared copy or two N x N matrices (the distances),
    then the kernel matrix with the median's copy, then with one chunk of the permutations."""
    n = n_x + n_y
    distances = n * dim * 8 + max(n * dim * 8, 2 * n * n * 8)
    chunk = min(permutations, PERMUTATION_CHUNK) * n * 65
    return max(distances, 2 * n * n * 8, n * n * 8 + chunk) + n * 128 + (64 << 10)


def c2st_bytes(n_x: int, n_y: int, dim: int) -> int:
    """Peak working memory of :func:`c2st` (n = min(n_x, n_y) rows from each sample, ``dim``
    wide, float64), its inputs aside: the pooled, standardised rows, then the train and test
    halves with one squared copy, then the N x N distances, their partial sort's indices and
    the product they are made from."""
    n = min(n_x, n_y)
    rows = n * dim * 8
    return max(4 * rows, 3 * rows + 2 * n * n * 8, 2 * rows + 2 * n * n * 8) + n * 512 + (64 << 10)


def _mmd2_unbiased(k0: np.ndarray, member_x: np.ndarray) -> np.ndarray:
    """Unbiased MMD^2 for each row of ``member_x`` (P, N booleans: which pooled rows are x).

    ``k0`` is the pooled kernel matrix with its diagonal zeroed, so a^T k0 a sums the x-x pairs
    without the i = i terms; all permutations are evaluated in one matrix product.
    """
    a = member_x.astype(np.float64)
    b = 1.0 - a
    m = a.sum(1)
    n = b.sum(1)
    ka = k0 @ a.T  # (N, P)
    kb = k0 @ b.T
    xx = (a.T * ka).sum(0)
    yy = (b.T * kb).sum(0)
    xy = (b.T * ka).sum(0)
    return xx / (m * (m - 1)) + yy / (n * (n - 1)) - 2.0 * xy / (m * n)


def mmd_test(x: np.ndarray, y: np.ndarray, *, permutations: int = 200, seed: int = 0) -> dict[str, Any]:
    """Unbiased MMD^2 between samples x and y, with a permutation p-value."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or len(y) < 2:
        raise ValueError("each sample needs at least 2 rows")
    pooled = np.concatenate([x, y])
    k0 = _sq_dists(pooled, pooled)
    bandwidth = math.sqrt(max(_off_diagonal_median(k0), 1e-12))
    # exp(-d2 / (2 h^2)), in place
    np.negative(k0, out=k0)
    np.divide(k0, 2 * bandwidth**2, out=k0)
    np.exp(k0, out=k0)
    np.fill_diagonal(k0, 0.0)
    m, total = len(x), len(pooled)
    del pooled  # the kernel matrix is all the null needs
    observed = np.zeros((1, total), dtype=bool)
    observed[0, :m] = True
    stat = float(_mmd2_unbiased(k0, observed)[0])
    rng = np.random.default_rng(seed)
    # In chunks: successive draws from one generator are the draws of one large call, so the
    # permutations (and the p-value) are those of drawing them all at once.
    exceed = 0
    for start in range(0, permutations, PERMUTATION_CHUNK):
        checkpoint()  # a served request's answer may no longer be wanted (its deadline passed)
        chunk = min(PERMUTATION_CHUNK, permutations - start)
        perms = np.argsort(rng.random((chunk, total)), axis=1) < m
        exceed += int((_mmd2_unbiased(k0, perms) >= stat).sum())
    return {
        "test": "mmd",
        "statistic": stat,
        "p_value": (exceed + 1) / (permutations + 1),
        "bandwidth": bandwidth,
        "permutations": permutations,
        "n_x": len(x),
        "n_y": len(y),
    }


def binomial_tail(successes: int, trials: int, p: float = 0.5) -> float:
    """P(Binomial(trials, p) >= successes)."""
    if successes <= 0:
        return 1.0
    logs = [
        math.lgamma(trials + 1)
        - math.lgamma(i + 1)
        - math.lgamma(trials - i + 1)
        + i * math.log(p)
        + (trials - i) * math.log(1 - p)
        for i in range(successes, trials + 1)
    ]
    top = max(logs)
    return float(min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs)))


def c2st(x: np.ndarray, y: np.ndarray, *, neighbours: int | None = None, seed: int = 0) -> dict[str, Any]:
    """Classifier two-sample test with a k-NN classifier (features standardised on the pool)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = min(len(x), len(y))
    if n < 10:
        raise ValueError("each sample needs at least 10 rows")
    rng = np.random.default_rng(seed)
    take_x, take_y = rng.permutation(len(x))[:n], rng.permutation(len(y))[:n]
    # Pooled and standardised in one array (mode clip: written in place, not through a buffer).
    pooled = np.empty((2 * n, x.shape[1]))
    np.take(x, take_x, axis=0, out=pooled[:n], mode="clip")
    np.take(y, take_y, axis=0, out=pooled[n:], mode="clip")
    pooled -= pooled.mean(0)
    pooled /= np.sqrt(np.einsum("ij,ij->j", pooled, pooled) / len(pooled)) + 1e-9
    labels = np.concatenate([np.ones(n), np.zeros(n)])
    order = rng.permutation(2 * n)
    train, test = order[:n], order[n:]
    k = neighbours or max(1, round(math.sqrt(n)) | 1)
    test_rows, train_rows = pooled[test], pooled[train]
    del pooled
    d2 = _sq_dists(test_rows, train_rows)
    del test_rows, train_rows
    nearest = np.argpartition(d2, k - 1, axis=1)[:, :k]
    prob_real = labels[train][nearest].mean(1)
    predicted = prob_real > 0.5
    ties = prob_real == 0.5
    predicted[ties] = rng.random(ties.sum()) < 0.5
    correct = int((predicted == labels[test].astype(bool)).sum())
    accuracy = correct / len(test)
    return {
        "test": "c2st",
        "statistic": accuracy,
        "accuracy": accuracy,
        "auc": auc(prob_real, labels[test]),
        "p_value": binomial_tail(correct, len(test)),
        "neighbours": k,
        "n_x": n,
        "n_y": n,
        "n_test": len(test),
    }


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve (ties count one half), by the rank-sum formula."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    pos, neg = scores[labels], scores[~labels]
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(allv):
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def jsd_lower_bound(logit_real: np.ndarray, logit_fake: np.ndarray) -> dict[str, float]:
    """From a discriminator D = sigmoid(logit): V = E_pi log D + E_p log(1 - D), and
    JSD(pi || p) >= (V + log 4) / 2 (equality at the optimal discriminator)."""
    log_d = -np.logaddexp(0.0, -np.asarray(logit_real, np.float64))
    log_1md = -np.logaddexp(0.0, np.asarray(logit_fake, np.float64))
    value = float(log_d.mean() + log_1md.mean())
    return {"value": value, "jsd_lower_bound": max(0.0, (value + math.log(4)) / 2), "log4": math.log(4)}
