"""Time from the end of training to the stored model, per stage, for every demo model.

For each (family, data) of `make demo` it trains 1 epoch, then runs the pipeline's stages
(export, parity, evaluate, store) as train_and_store does, and prints their seconds; with
--compare it also exports each model with the dynamo exporter (optimised, as before, and not)
side by side, with the parity each exporter reaches.

  .venv/bin/python benchmarks/export.py                       # every demo model, TorchScript
  .venv/bin/python benchmarks/export.py --compare flow-8gaussians,flow-digits
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("BENTOML_HOME", tempfile.mkdtemp(prefix="genreg-export-bench-"))


def main() -> None:
    import torch

    import registry.pipeline.export as export
    from registry.contract.family import TrainControl
    from registry.contract.loading import get_plugins
    from registry.datasets import load_dataset
    from registry.packaging.demo import DEFAULT_MODELS
    from registry.pipeline.evaluate import evaluate
    from registry.runtime.models import LoadedModel
    from registry.runtime.store import StoredModel

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--compare", default="", help="comma-separated FAMILY-DATA names to export with dynamo too"
    )
    args = parser.parse_args()
    compare = {c for c in args.compare.split(",") if c}
    torch.set_num_threads(2)
    plugins = get_plugins()
    torchscript = export.export_torch
    print(f"{'model':<24} {'exporter':<18} {'export s':>8} {'parity s':>8} {'evaluate s':>10}  parity")
    for demo in DEFAULT_MODELS:
        name, family = demo.name, demo.family
        fam = plugins.get(family)
        data = load_dataset(demo.data, conditional=demo.conditional)
        model = fam.train(data, fam.Config(), TrainControl(seed=0, epochs=1, progress=False))
        exporters = [("torchscript", torchscript)]
        if name in compare:
            for optimize in (True, False):
                label = f"dynamo{'' if optimize else ' unoptimised'}"
                exporters.append(
                    (label, functools.partial(torchscript, exporter="dynamo", optimize=optimize))
                )
        for label, exporter in exporters:
            with tempfile.TemporaryDirectory() as tmp:
                directory = Path(tmp)
                # The families call registry.pipeline.export.export_torch through their own
                # module's import: swap it where they look it up.
                modules = [m for m in sys.modules.values() if getattr(m, "export_torch", None) is torchscript]
                for m in modules:
                    m.export_torch = exporter
                try:
                    start = time.monotonic()
                    graphs = fam.export(model, directory)
                    exported = time.monotonic() - start
                finally:
                    for m in modules:
                        m.export_torch = torchscript
                start = time.monotonic()
                parity = export.check_parity(fam, model, graphs, directory, data.test, discrete=data.discrete)
                checked = time.monotonic() - start
                meta = {
                    "family": family,
                    "capabilities": sorted(c.value for c in fam.model_capabilities(model)),
                }
                meta |= {"data": data.describe(), "graphs": [g.model_dump(mode="json") for g in graphs]}
                meta["config"] = fam.config_of(model).model_dump(mode="json")
                probe = StoredModel(name, "unsaved", directory, {**meta, "checksums": {}})
                start = time.monotonic()
                if label == "torchscript":
                    evaluate(LoadedModel(probe, providers=["CPUExecutionProvider"]), data)
                evaluated = time.monotonic() - start
                worst = max(parity.values())
                print(
                    f"{name:<24} {label:<18} {exported:8.1f} {checked:8.1f} {evaluated:10.1f}  max {worst:.2g}",
                    flush=True,
                )


if __name__ == "__main__":
    main()
