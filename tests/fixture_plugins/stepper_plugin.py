"""Fixture plugin: `stepper`, a third-party family whose sampler is a step loop.

The model is a first-order Markov chain over the dimensions of discrete data: P(x_0) and
P(x_d | x_{d-1}), counted from the training rows (add-one smoothing), so log P(x) is exact.
Its sampler is exported as one step (state, step, Gumbel noise -> state) that the serving
runtime applies once per dimension: the worked example of docs/writing-a-plugin.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from registry import Capability, DataError, Family, FamilyConfig, GraphSpec, NoiseInput, StepLoop, hookimpl


class StepperConfig(FamilyConfig):
    smoothing: float = 1.0


@dataclass
class StepperModel:
    config: StepperConfig
    first: np.ndarray  # (L,) log P(x_0)
    moves: np.ndarray  # (D - 1, L, L) log P(x_d = b | x_{d-1} = a)


class StepperFamily(Family):
    name = "stepper"
    description = "Markov chain over the dimensions, sampled one step per dimension (fixture)"
    capabilities = frozenset({Capability.SAMPLE, Capability.LOG_PROB})
    Config = StepperConfig

    def train(self, data, config, control):
        if not data.discrete:
            raise DataError("stepper needs discrete data")
        x, levels = data.train.astype(int), data.levels
        first = np.bincount(x[:, 0], minlength=levels) + config.smoothing
        moves = np.full((data.dim - 1, levels, levels), config.smoothing)
        for d in range(1, data.dim):
            np.add.at(moves[d - 1], (x[:, d - 1], x[:, d]), 1.0)
        return StepperModel(config, np.log(first / first.sum()), np.log(moves / moves.sum(-1, keepdims=True)))

    def log_prob(self, model, x, noise):
        x = x.astype(int)
        steps = model.moves[np.arange(x.shape[1] - 1), x[:, :-1], x[:, 1:]]
        return model.first[x[:, 0]] + steps.sum(1)

    def _table(self, model) -> np.ndarray:
        # Step d's log-probabilities given the previous level: (D, L_prev, L).
        levels = len(model.first)
        return np.concatenate([np.broadcast_to(model.first, (1, levels, levels)), model.moves])

    def sample(self, model, noise):
        # The reference loop: noise["g"] is (steps, n, L).
        table = self._table(model)
        steps, n, _ = noise["g"].shape
        state = np.zeros((n, steps))
        for t in range(steps):
            prev = state[:, t - 1].astype(int) if t else np.zeros(n, dtype=int)
            state[:, t] = np.argmax(table[t][prev] + noise["g"][t], axis=1)
        return state

    def export(self, model, directory: Path):
        import torch

        from registry.pipeline.export import export_torch

        table = torch.tensor(self._table(model), dtype=torch.float32)
        dim, levels = table.shape[0], table.shape[2]

        class Step(torch.nn.Module):
            def forward(self, state, step, g):
                dims = torch.arange(dim)
                current = dims[None, :] == step  # the dimension this step fills
                before = (dims[None, :] == step - 1).to(state.dtype)
                prev = (state * before).sum(1).long()  # 0 at step 0: the first row ignores it
                rows = table[step[:, 0], prev]  # (n, L)
                level = torch.argmax(rows + g, dim=1).to(state.dtype)
                return torch.where(current, level[:, None], state)

        class Scorer(torch.nn.Module):
            def forward(self, x):
                idx = x.long()
                logp = table[0, 0][idx[:, 0]]
                for d in range(1, dim):
                    logp = logp + table[d][idx[:, d - 1], idx[:, d]]
                return logp

        example = {"state": torch.zeros(3, dim), "step": torch.zeros(3, 1, dtype=torch.int64)}
        export_torch(Step(), {**example, "g": torch.zeros(3, levels)}, "next", directory / "sampler.onnx")
        export_torch(Scorer(), {"x": torch.zeros(3, dim)}, "log_likelihood", directory / "scorer.onnx")
        return [
            GraphSpec(
                role="sampler",
                file="sampler.onnx",
                x_input=None,
                noise=[NoiseInput(name="g", dist="gumbel", dim=levels)],
                output="next",
                loop=StepLoop(steps=dim, state_dim=dim),
            ),
            GraphSpec(role="scorer", file="scorer.onnx", kind="log_prob", output="log_likelihood"),
        ]


@hookimpl
def register_families(register):
    register(StepperFamily)
