"""Anchors on `patches-rgb`: lossless codecs and genreg's baselines, bits/dim on the same test patches.

Measured in one run on this machine, on the 900 test patches (32x32x3, 256 levels):
(a) PNG (Pillow, compress_level 9) and lossless WebP (Pillow, method 6, quality 100): each
    patch encoded alone, as an image file would be; bits/dim = bytes x 8 / 3,072, averaged
    over the patches. This is the classic anchor for likelihood models on images (PNG: 5.87
    bits/dim on CIFAR-10);
(b) genreg's baselines trained with `genreg train` on the training split: the per-value
    categorical (exact) and the diagonal Gaussian (dequantised: a bound), test bits/dim as the
    pipeline stores them.

Run: .venv/bin/python benchmarks/codecs.py [--store DIR]   (about a minute)
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def codec_bits_per_dim(patches: np.ndarray, shape: tuple[int, int, int], fmt: str, **options) -> float:
    """Mean bits/dim of each patch encoded alone in ``fmt`` (losslessly; checked by decoding)."""
    from PIL import Image

    bits = []
    for row in patches:
        image = row.reshape(shape).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(image if shape[2] == 3 else image[:, :, 0]).save(buf, format=fmt, **options)
        back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB" if shape[2] == 3 else "L"))
        if not np.array_equal(back.reshape(-1), row.astype(np.uint8)):
            raise RuntimeError(f"{fmt} did not round-trip a patch: not lossless with {options}")
        bits.append(8 * len(buf.getvalue()) / row.size)
    return float(np.mean(bits))


def baseline(family: str) -> tuple[float, float]:
    """(test bits/dim, wall seconds) of `genreg train FAMILY --data patches-rgb`."""
    from registry.runtime.store import get_model

    name = f"{family}-patches-rgb"
    start = time.monotonic()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "registry.cli",
            "train",
            family,
            "--data",
            "patches-rgb",
            "--name",
            name,
            "--quiet",
        ],
        check=True,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    return get_model(name).metrics["test"]["bits_per_dim"], time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", help="BENTOML_HOME to train into (default: a temporary one)")
    args = parser.parse_args()
    os.environ["BENTOML_HOME"] = args.store or tempfile.mkdtemp(prefix="genreg-bench-codecs-")
    from registry.datasets import load_patches_rgb

    data = load_patches_rgb()
    shape = data.image_shape
    print(f"patches-rgb: {len(data.train)} train, {len(data.test)} test patches of {shape}")
    print("| anchor | test bits/dim | note |")
    print("|---|---:|---|")
    png = codec_bits_per_dim(data.test, shape, "PNG", compress_level=9)
    print(f"| PNG (Pillow, level 9) | {png:.3f} | each patch alone |")
    webp = codec_bits_per_dim(data.test, shape, "WEBP", lossless=True, quality=100, method=6)
    print(f"| WebP lossless (Pillow, method 6) | {webp:.3f} | each patch alone |")
    for family, kind in (("categorical", "exact"), ("gaussian", "dequantised bound")):
        bpd, wall = baseline(family)
        print(f"| genreg {family} | {bpd:.3f} | {kind}; trained in {wall:.0f} s |")
    print(f"| 0.8 x PNG (issue 29's target for the better model) | {0.8 * png:.3f} | |")


if __name__ == "__main__":
    main()
