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
# genreg's routes are answered ahead of BentoML's request middlewares (services.traffic), so
# genreg counts its requests itself; BentoML's bentoml_service_request_* count only the routes
# BentoML answers (health, readiness).
IN_PROGRESS = Gauge(
    "genreg_requests_in_progress",
    "Requests being handled, by endpoint and protocol",
    ["endpoint", "protocol"],
    multiprocess_mode="livesum",
)
REQUESTS = Counter(
    "genreg_requests",
    "Requests answered, by endpoint, protocol (genreg or v2) and HTTP status code",
    ["endpoint", "protocol", "code"],
)
REQUEST_SECONDS = Histogram(
    "genreg_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by endpoint and protocol",
    ["endpoint", "protocol"],
    buckets=(
        0.0005,
        0.001,
        0.0025,
        0.005,
        0.01,
        0.025,
        0.05,
        0.1,
        0.25,
        0.5,
        1.0,
        2.5,
        5.0,
        10.0,
        30.0,
        60.0,
    ),
)

# Tasks (services.tasks): what waits and runs in each worker, how they end, how long they wait.
TASKS = Gauge(
    "genreg_tasks",
    "Tasks queued or running, by endpoint and state (queued, running)",
    ["endpoint", "state"],
    multiprocess_mode="livesum",
)
TASKS_FINISHED = Counter(
    "genreg_tasks_finished",
    "Tasks finished, by endpoint and outcome (completed, failed, canceled)",
    ["endpoint", "outcome"],
)
TASK_QUEUE_SECONDS = Histogram(
    "genreg_task_queue_seconds",
    "Time from a task's submission to the start of its work, by endpoint",
    ["endpoint"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0),
)
