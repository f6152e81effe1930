"""deploy/: Kubernetes manifests (schema-validated offline), Prometheus config, Grafana dashboard."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
# kubernetes-validate ships the JSON schemas of each Kubernetes release: no network needed.
K8S_VERSIONS = ["1.28.0", "1.33.0"]
REQUIRED_METRICS = {
    "genreg_rows_total",
    "genreg_inference_seconds",
    "genreg_model_load_seconds",
    "genreg_errors_total",
    "genreg_model_info",
    "genreg_requests_total",
    "genreg_request_duration_seconds",
    "genreg_requests_in_progress",
}


def manifests(folder: Path = DEPLOY / "k8s") -> dict[str, dict]:
    docs = {}
    for path in sorted(folder.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(version):
    docs = manifests()
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= set(docs)
    for doc in docs.values():
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_a_broken_manifest():
    deployment = copy.deepcopy(manifests()["Deployment"])
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")  # unknown field under strict
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)
    deployment = copy.deepcopy(manifests()["Deployment"])
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_manifests_fit_together_and_probe_the_service_endpoints():
    docs = manifests()
    deployment, service, hpa = docs["Deployment"], docs["Service"], docs["HorizontalPodAutoscaler"]
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert docs["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] >= 2  # the budget keeps one while another drains
    container = pod["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    assert service["spec"]["ports"][0]["targetPort"] in ports
    assert int(pod["metadata"]["annotations"]["prometheus.io/port"]) == ports["http"]
    assert f"--port {ports['http']}" in " ".join(container["args"])
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert "cpu" in container["resources"]["requests"]  # the HPA's utilisation needs a request


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_the_s3_variant_matches_the_schemas(version):
    docs = manifests(DEPLOY / "k8s" / "s3")
    assert set(docs) == {"Deployment", "Secret"}
    for doc in docs.values():
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_s3_variant_pulls_into_its_own_store_with_the_secrets_credentials():
    docs, shared = manifests(DEPLOY / "k8s" / "s3"), manifests()
    pod = docs["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GENREG_MODELS_FROM"].startswith("s3://")
    secret = docs["Secret"]
    assert [s["secretRef"]["name"] for s in container["envFrom"]] == [secret["metadata"]["name"]]
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(secret["stringData"])
    # No credential in the Deployment itself: only through the Secret.
    assert not any(name.startswith("AWS_") for name in env)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert mounts["models"] == "/home/bentoml/models" and "emptyDir" in volumes["models"]
    # The shared Service, budget and autoscaler select and scale these pods too.
    assert shared["Service"]["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert (
        docs["Deployment"]["metadata"]["name"]
        == shared["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"]
    )
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"


def test_prometheus_config_scrapes_annotated_genreg_pods():
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["genreg-local"]["static_configs"][0]["targets"] == ["127.0.0.1:3000"]
    pods = jobs["genreg-pods"]
    assert pods["kubernetes_sd_configs"] == [{"role": "pod"}]
    keeps = {
        tuple(r["source_labels"]): r["regex"] for r in pods["relabel_configs"] if r.get("action") == "keep"
    }
    assert keeps[("__meta_kubernetes_pod_annotation_prometheus_io_scrape",)] == "true"
    app = manifests()["Deployment"]["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"]
    assert keeps[("__meta_kubernetes_pod_label_app_kubernetes_io_name",)] == app
    rewrite = next(r for r in pods["relabel_configs"] if r.get("target_label") == "__address__")
    joined = "10.0.0.7:8080;3000"  # Prometheus joins source labels with ';'
    assert (
        re.fullmatch(rewrite["regex"], joined).expand(rewrite["replacement"].replace("$", "\\"))
        == "10.0.0.7:3000"
    )


def dashboard_metrics() -> set[str]:
    board = json.loads((DEPLOY / "grafana" / "genreg.json").read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p["targets"]]
    assert exprs and all(p["datasource"]["uid"] == "${datasource}" for p in board["panels"])
    names = set()
    for expr in exprs:
        names |= {
            re.sub(r"_(bucket|sum|count)$", "", m) for m in re.findall(r"\b((?:genreg|bentoml)_\w+)", expr)
        }
    return names


def test_dashboard_charts_every_service_metric():
    assert dashboard_metrics() >= REQUIRED_METRICS


@pytest.mark.slow
def test_dashboard_metrics_exist_on_a_running_service(server):
    client, _ = server
    client.post("/sample", json={"model": "gaussian-digits", "n": 2, "seed": 0})
    # A counter appears once counted: one refusal, so the errors panel's series exists.
    assert client.post("/score", json={"model": "gaussian-digits", "x": "rows"}).status_code == 400
    text = client.get("/metrics").text
    exposed = {
        re.sub(r"_(bucket|sum|count|created)$", "", line.split("{")[0].split(" ")[0])
        for line in text.splitlines()
    }
    missing = dashboard_metrics() - exposed
    assert not missing, f"charted but not exported: {missing}"


def test_kserve_runtime_fits_genreg_and_the_inference_service():
    """deploy/kserve: CRDs the offline schemas do not know, so their core parts are checked here."""
    runtime = yaml.safe_load((DEPLOY / "kserve" / "servingruntime.yaml").read_text())
    isvc = yaml.safe_load((DEPLOY / "kserve" / "inferenceservice.yaml").read_text())
    assert (runtime["kind"], isvc["kind"]) == ("ServingRuntime", "InferenceService")
    (container,) = runtime["spec"]["containers"]
    # The runtime's container is a core Container: validate it inside a Pod, strictly.
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "check"},
        "spec": {"containers": [container]},
    }
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(pod, version, strict=True)
    port = container["ports"][0]["containerPort"]
    assert container["args"][container["args"].index("--port") + 1] == str(port)
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}
    model = isvc["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"] == ["v2"]
    env = {e["name"]: e["value"] for e in model["env"]}
    assert env["GENREG_MODELS"] == isvc["metadata"]["name"]  # the name clients put in /v2/models/<name>
