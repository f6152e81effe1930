"""What the model commands share: a stored model opened for inference, and rows written out
(stdout, .npy, .csv, or a PNG grid of image rows)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from registry.cli.app import fail


def load_model(ref: str) -> Any:
    """The stored model ``name`` or ``name:version``, its graphs opened (LoadedModel)."""
    from registry.runtime.models import LoadedModel
    from registry.runtime.store import get_model

    return LoadedModel(get_model(ref))


def write_rows(
    loaded: Any, x: np.ndarray, out: Path | None, png: bool = True, cols: int | None = None
) -> None:
    """``x`` to stdout (``out`` None), .npy, .csv or (``png``) a PNG grid ``cols`` wide (default:
    near-square) of a model trained on images; any other output is refused by name."""
    suffix = out.suffix.lower() if out is not None else None
    if out is None:
        np.savetxt(sys.stdout, x, fmt="%.6g", delimiter=",")
    elif suffix == ".npy":
        np.save(out, x)
    elif suffix == ".csv":
        np.savetxt(out, x, fmt="%.6g", delimiter=",")
    elif suffix == ".png" and png:
        from registry.runtime.png import png_grid

        shape = loaded.stored.data.get("image_shape")
        if not shape:
            fail(f"{loaded.stored.tag} was not trained on images; write .npy or .csv instead")
        high = loaded.stored.data.get("high") or float(np.max(x))
        out.write_bytes(png_grid(x, tuple(shape), high=high, cols=cols))
    else:
        kinds = ".npy, .csv or .png" if png else ".npy or .csv"
        fail(f"unsupported output {out.name!r}: use {kinds}")
