"""The one latent-space path: rows -> latents (encode) and latents -> rows (decode).

The CLI, the service (/encode, /decode, V2) and the evaluations call these, so a latent is
checked, planned within the request's memory budget and drawn from its seed in one way. Each
runs over the model's latent-space graphs (registry.runtime.graphs.GraphSpec: an encoder of
kind ``gaussian`` or ``exact``; decoders of kinds ``mean`` and ``sample``, or ``exact``).

What the answers mean:

- a VAE's encoder answers q(z|x): its ``mean`` and ``log_var``, and z, the mean (``sample``
  false, the default) or a draw mean + exp(log_var / 2) * eps, eps ~ N(0, I) from the seed;
  its decoder answers E[x|z] (the default) or a draw of x|z from the seed;
- a flow's encoder answers z = f(x) exactly; on discrete data z = f(x + u) for the
  dequantisation noise u drawn from the seed (the scorer's own: uniform, or q(u|x)), with
  ``dequantized`` = x + u; its decoder answers f^-1(z), which is x + u again for such a z
  (floor it for x). Neither is random beyond that, so ``sample`` true is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from registry.runtime.budget import HELD_VALUE_BYTES, Plan
from registry.runtime.graphs import GraphSpec, NoiseInput, draw_noise
from registry.runtime.models import CapabilityError, LoadedModel
from registry.runtime.rows import InputError, check_rows
from registry.runtime.store import StoredModel

ENCODERS = ("gaussian", "exact")
DECODERS = ("mean", "exact", "sample")


def encoder(stored: StoredModel) -> GraphSpec | None:
    """The model's served encoder (a VAE stored before the latent space was served has an
    encoder graph without a kind: it is not served)."""
    spec = stored.graph("encoder")
    return spec if spec is not None and spec.kind in ENCODERS else None


def decoder(stored: StoredModel, sample: bool | None = None) -> GraphSpec | None:
    """The decoder for ``sample`` (True: a draw of x|z; False or None: the mean or the exact inverse)."""
    kinds = ("sample",) if sample else ("mean", "exact")
    for kind in kinds:
        spec = stored.graph("decoder", kind)
        if spec is not None:
            return spec
    return None


def latent_dim(stored: StoredModel) -> int | None:
    """The width of the model's latents z (None: it has no served encoder)."""
    spec = encoder(stored)
    return None if spec is None else spec.parts[0].dim


def latent_info(stored: StoredModel) -> dict[str, Any]:
    """What /models and the OpenAPI document state of the latent space (capabilities as data)."""
    spec = encoder(stored)
    return {
        "latent_dim": latent_dim(stored),
        "latent": None if spec is None else spec.kind,
        "decode_sample": decoder(stored, True) is not None,
    }


def _unable(stored: StoredModel, what: str) -> CapabilityError:
    can = ", ".join(stored.capabilities) or "nothing"
    return CapabilityError(f"{stored.tag} cannot {what}; it can: {can}")


def _sample_refused(stored: StoredModel, what: str) -> InputError:
    return InputError(
        "sample",
        f"sample: {stored.tag}'s {what} is exact, not a draw (its only noise is the dequantisation "
        "noise of discrete data, drawn from `seed`); omit sample or send false",
    )


@dataclass(frozen=True)
class Encoded:
    """What encoding answers: z per row, and what the encoder says besides (None where not)."""

    model: str
    z: np.ndarray
    mean: np.ndarray | None = None
    log_var: np.ndarray | None = None
    dequantized: np.ndarray | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "z": self.z}
        for name in ("mean", "log_var", "dequantized"):
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out


@dataclass(frozen=True)
class LatentRequest:
    """A checked request: the graph, its float32 rows and whether to draw."""

    spec: GraphSpec
    rows: np.ndarray
    sample: bool


def check_encode(loaded: LoadedModel, x: Any, sample: bool | None) -> LatentRequest:
    """The rows to encode, checked against the model's data (the one row check); CapabilityError
    for a model without an encoder, InputError naming the field otherwise."""
    spec = encoder(loaded.stored)
    if spec is None:
        raise _unable(loaded.stored, "encode")
    if sample and spec.kind == "exact":
        raise _sample_refused(loaded.stored, "encoder")
    return LatentRequest(spec, check_rows(x, loaded.stored.data, what="x"), bool(sample))


def check_decode(loaded: LoadedModel, z: Any, sample: bool | None) -> LatentRequest:
    """The latents to decode: rows of the latent width, finite and within float32."""
    dim = latent_dim(loaded.stored)
    spec = decoder(loaded.stored, sample)
    if dim is None or decoder(loaded.stored) is None:
        raise _unable(loaded.stored, "decode")
    if spec is None:
        raise _sample_refused(loaded.stored, "decoder")
    return LatentRequest(spec, check_rows(z, {"dim": dim}, what="z"), bool(sample))


def in_width(stored: StoredModel, spec: GraphSpec) -> int:
    """The width of the rows ``spec`` takes: the data's (an encoder), the latent's (a decoder)."""
    return int(stored.data["dim"]) if spec.role == "encoder" else int(latent_dim(stored) or 0)


def held_row(stored: StoredModel, spec: GraphSpec) -> int:
    """What one row of an /encode or /decode over ``spec`` holds for the whole request: the
    parsed row, and its answer (float32, its float64 parts, then JSON)."""
    out = sum(p.dim for p in spec.parts) if spec.role == "encoder" else int(stored.data["dim"])
    return (in_width(stored, spec) + out) * HELD_VALUE_BYTES


def plan(loaded: LoadedModel, checked: LatentRequest) -> Plan:
    """How the request's graph calls run within the request's memory budget (BudgetError naming
    ``x`` or ``z`` when even its rows would not fit)."""
    spec, rows = checked.spec, checked.rows
    held = len(rows) * held_row(loaded.stored, spec)
    return loaded.plan(spec, len(rows), held=held, width=rows.shape[1], field=spec.x_input or "x")


def encode(
    loaded: LoadedModel, checked: LatentRequest, seed: int | None, chunks: Plan | None = None
) -> Encoded:
    """The latents of the checked rows; the same seed gives the same draws, however the rows
    are cut into calls."""
    spec = checked.spec
    chunks = chunks or plan(loaded, checked)
    out = loaded.noisy(spec, checked.rows, 1, seed, chunks).astype(np.float32, copy=False)
    parts, start = {}, 0
    for part in spec.parts:
        parts[part.name] = np.ascontiguousarray(out[:, start : start + part.dim])  # writers need C order
        start += part.dim
    tag = loaded.stored.tag
    if spec.kind == "exact":
        return Encoded(tag, parts["z"], dequantized=parts.get("dequantized"))
    mean, log_var = parts["mean"], parts["log_var"]
    z = mean
    if checked.sample:
        # The reparametrised draw: eps as a normal noise input of the latent's width is drawn.
        eps = draw_noise(
            [NoiseInput(name="eps", dist="normal", dim=mean.shape[1])], len(mean), np.random.default_rng(seed)
        )
        z = (mean + np.exp(0.5 * log_var) * eps["eps"]).astype(np.float32)
    return Encoded(tag, z, mean=mean, log_var=log_var)


def decode(
    loaded: LoadedModel, checked: LatentRequest, seed: int | None, chunks: Plan | None = None
) -> np.ndarray:
    """Rows in data units from the checked latents (a draw of x|z from the seed where asked)."""
    chunks = chunks or plan(loaded, checked)
    return loaded.noisy(checked.spec, checked.rows, 1, seed, chunks).astype(np.float32, copy=False)


# --- what is built on encode and decode: traversals, interpolations, active units -------------
TRAVERSE_RANGE = 3.0  # a traversal spans -3..3 prior standard deviations (p(z) = N(0, I) for both families)
ACTIVE_THRESHOLD = 0.01  # Burda et al. (2016): a unit is active when Cov_x(E_q[z_i | x]) > 0.01


def kl_per_dim(mean: np.ndarray, log_var: np.ndarray) -> np.ndarray:
    """KL(q(z_i|x) || N(0, 1)) per latent dimension i, averaged over the rows (nats)."""
    mean, log_var = np.asarray(mean, np.float64), np.asarray(log_var, np.float64)
    return (0.5 * (mean**2 + np.exp(log_var) - 1.0 - log_var)).mean(0)


def active_units(mean: np.ndarray, threshold: float = ACTIVE_THRESHOLD) -> np.ndarray:
    """Whether each latent dimension is active: its posterior mean varies with x (Burda et al.)."""
    return np.asarray(mean, np.float64).var(0) > threshold


def latent_report(loaded: LoadedModel, x: np.ndarray, seed: int = 0) -> dict[str, Any]:
    """Per-dimension KL and active units of a gaussian encoder over rows ``x`` (the evaluation's)."""
    encoded = encode(loaded, check_encode(loaded, x, None), seed)
    assert encoded.mean is not None and encoded.log_var is not None
    kl = kl_per_dim(encoded.mean, encoded.log_var)
    active = active_units(encoded.mean)
    return {
        "kl_per_dim": [round(float(v), 6) for v in kl],
        "active": [bool(a) for a in active],
        "active_units": int(active.sum()),
        "rows": len(x),
    }


def traversal_order(loaded: LoadedModel, x: np.ndarray | None = None) -> list[int]:
    """Latent dimensions for a traversal, most informative first: a VAE's by KL(q(z_i|x)||p(z_i))
    on the validation split (stored with the model, or over ``x``), so that inactive ones sink
    to the bottom; a flow's in order (each carries information: it is invertible)."""
    dim = latent_dim(loaded.stored)
    if dim is None:
        raise _unable(loaded.stored, "encode")
    spec = encoder(loaded.stored)
    assert spec is not None
    if spec.kind != "gaussian":
        return list(range(dim))
    kl = loaded.stored.metrics.get("test", {}).get("latent", {}).get("kl_per_dim")
    if kl is None:
        if x is None:
            raise ValueError(
                f"{loaded.stored.tag} was stored without its per-dimension KL; pass rows to order by"
            )
        kl = latent_report(loaded, x)["kl_per_dim"]
    return [int(i) for i in np.argsort(-np.asarray(kl), kind="stable")]


def traversal(z: np.ndarray, dims: list[int], values: np.ndarray) -> np.ndarray:
    """Latents of a traversal grid: for each of ``dims`` (grid rows), ``z`` with that dimension
    set to each of ``values`` (grid columns), the others kept."""
    grid = np.repeat(np.asarray(z, np.float32)[None, None, :], len(dims), 0).repeat(len(values), 1)
    for r, d in enumerate(dims):
        grid[r, :, d] = values
    return grid.reshape(len(dims) * len(values), -1)


def slerp(a: np.ndarray, b: np.ndarray, steps: int) -> np.ndarray:
    """``steps`` latents from a to b along the great circle (spherical interpolation, which
    keeps a Gaussian latent's norm typical where the straight line would shrink it toward the
    mode), linear where the two are (nearly) parallel."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    t = np.linspace(0.0, 1.0, steps)[:, None]
    cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
    omega = math.acos(min(1.0, max(-1.0, cos)))
    if math.sin(omega) < 1e-6:
        return ((1 - t) * a + t * b).astype(np.float32)
    out = (np.sin((1 - t) * omega) * a + np.sin(t * omega) * b) / math.sin(omega)
    return out.astype(np.float32)
