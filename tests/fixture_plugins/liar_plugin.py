"""Fixture plugin whose family claims log_prob without implementing it."""

from registry import Capability, Family, hookimpl


class Liar(Family):
    name = "liar"
    capabilities = frozenset({Capability.SAMPLE, Capability.LOG_PROB})

    def train(self, data, config, control):
        return None

    def sample(self, model, noise):
        return noise

    def export(self, model, directory):
        return []


@hookimpl
def register_families(register):
    register(Liar)
