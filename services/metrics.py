"""Model-level Prometheus metrics, defined once at module level.

BentoML serves the default registry at /metrics and, with several workers, aggregates the
workers' values through prometheus_client's multiprocess mode.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# ``protocol`` tells genreg's own API ("genreg") from the Open Inference Protocol ("v2"):
# the same requests, counted alike, told apart.
ROWS = Counter(
    "genreg_rows",
    "Rows sampled or scored, by model, kind (sample, log_prob, bound, discriminator) and protocol",
    ["model", "kind", "protocol"],
)
INFERENCE_SECONDS = Histogram(
    "genreg_inference_seconds",
    "ONNX Runtime inference latency by model and graph",
    ["model", "graph"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0),
)
MODEL_LOAD_SECONDS = Gauge(
    "genreg_model_load_seconds",
    "Time to verify a model's checksums and open its ONNX Runtime sessions",
    ["model"],
    multiprocess_mode="max",
)
ERRORS = Counter(
    "genreg_errors",
    "Requests answered with an error, by endpoint, reason and protocol (genreg or v2)",
    ["endpoint", "reason", "protocol"],
)
MODEL_INFO = Gauge(
    "genreg_model_info",
    "1 for each served model version, labelled with the ONNX Runtime execution provider it runs on",
    ["model", "version", "provider"],
    multiprocess_mode="max",
)
MODEL_LOADS = Counter(
    "genreg_model_loads",
    "Model versions the live registry loaded or refused (checksum or load failure), by model",
    ["model", "outcome"],
)
# BentoML's own request metrics never see the routes services.routes answers (the middleware
# runs ahead of BentoML's), so genreg counts its requests in progress itself.
IN_PROGRESS = Gauge(
    "genreg_requests_in_progress",
    "Requests being handled, by endpoint",
    ["endpoint"],
    multiprocess_mode="livesum",
)
