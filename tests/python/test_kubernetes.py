"""deploy/kubernetes: rendered offline with `kubectl kustomize` and validated against the
Kubernetes API's schemas (kubernetes-validate, strict: unknown fields are errors), then
checked for what the schemas cannot know: every Foldline binary is deployed with probes on
its own ops routes, requests, a disruption budget and a scrape config; settings exist in the
code; secrets resolve; autoscalers target real consumer groups. No cluster runs here."""

import pathlib
import re
import shutil
import subprocess

import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
# The oldest Kubernetes the manifests target (the preStop `sleep` action is on by default
# from 1.30).
KUBERNETES_VERSION = "1.30.0"
# Kinds from operators the cluster must have installed; their CRD schemas do not ship with
# kubernetes-validate, so the checks below cover what matters in them.
OPERATOR_KINDS = {"ServiceMonitor", "ScaledObject"}
# Each binary's consumer group by default (docs/configuration.md).
GROUPS = {
    "projector": "foldline-postgres-projector",
    "archiver": "foldline-archiver",
    "recent-events": "foldline-recent-events",
}


def render(overlay):
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize built in) is needed to render deploy/kubernetes"
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S / overlay)], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def documented_settings():
    table = (ROOT / "docs" / "configuration.md").read_text()
    return set(re.findall(r"`([A-Z][A-Z0-9_]+)[`=]", table))


def workspace_binaries():
    names = set()
    for manifest in ROOT.glob("**/Cargo.toml"):
        if "target" in manifest.parts:
            continue
        text = manifest.read_text()
        names.update(re.findall(r'\[\[bin\]\]\s*name\s*=\s*"([^"]+)"', text))
    return names


def test_every_resource_is_valid_against_the_kubernetes_schemas():
    for overlay in ["base", "example"]:
        docs = render(overlay)
        assert docs, overlay
        for doc in docs:
            if doc["kind"] in OPERATOR_KINDS:
                continue
            # Raises ValidationError (unknown field, wrong type, missing field).
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        assert {d["kind"] for d in docs} - OPERATOR_KINDS >= {
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "ConfigMap",
        }


def test_a_broken_manifest_is_caught():
    doc = by_kind(render("base"), "Deployment")["producer"]
    doc["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pathh"] = "/"
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError:
        return
    raise AssertionError("an unknown field passed strict validation")


def test_every_service_runs_a_real_binary_with_probes_requests_and_a_disruption_budget():
    docs = render("example")
    deployments = by_kind(docs, "Deployment")
    assert set(deployments) == {
        "producer", "projector", "query", "notifier", "archiver", "recent-events",
    }
    binaries = workspace_binaries()
    settings = documented_settings()
    secret = next(iter(by_kind(docs, "Secret").values()))
    budgets = by_kind(docs, "PodDisruptionBudget")
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["command"][0] in binaries, container["command"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        env = {e["name"]: e for e in container["env"]}
        listen = [e["value"] for k, e in env.items() if k.endswith("_LISTEN")]
        assert listen == [f"0.0.0.0:{list(ports.values())[0]}"], (name, listen, ports)
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready", name
        assert container["livenessProbe"]["httpGet"]["path"] == "/health", name
        for probe in ["readinessProbe", "livenessProbe", "startupProbe"]:
            assert container[probe]["httpGet"]["port"] in ports, (name, probe)
        assert {"cpu", "memory"} <= set(container["resources"]["requests"]), name
        assert "memory" in container["resources"]["limits"], name
        assert pod["terminationGracePeriodSeconds"] >= 30, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        for key, item in env.items():
            if "fieldRef" in item.get("valueFrom", {}):
                continue  # the pod's own facts (its IP), for the settings that use them
            assert key in settings, f"{name}: {key} is not in docs/configuration.md"
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == secret["metadata"]["name"], (name, ref)
                assert ref["key"] in secret["data"], (name, ref)
        labels = deployment["spec"]["selector"]["matchLabels"]
        budget = budgets[name]
        assert budget["spec"]["selector"]["matchLabels"] == labels, name
        replicas = deployment["spec"]["replicas"]
        if "minAvailable" in budget["spec"]:
            assert budget["spec"]["minAvailable"] < replicas, f"{name}: a drain could never proceed"
    config = by_kind(docs, "ConfigMap")["foldline-config"]["data"]
    assert set(config) <= settings, set(config) - settings
    # Several producers share the partitions; each says where to forward requests for its
    # partitions: its own pod's address.
    producer = deployments["producer"]
    assert producer["spec"]["replicas"] >= 2
    env = {e["name"]: e for e in producer["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["FOLDLINE_PRODUCER_OWNERSHIP"]["value"] == "partitions"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    assert env["FOLDLINE_PRODUCER_URL"]["value"] == "http://$(POD_IP):8080"
    names = [e["name"] for e in producer["spec"]["template"]["spec"]["containers"][0]["env"]]
    assert names.index("POD_IP") < names.index("FOLDLINE_PRODUCER_URL"), "$(POD_IP) expands only after its definition"


def test_every_service_is_scraped_and_consumers_scale_with_their_groups_lag():
    docs = render("example")
    services = by_kind(docs, "Service")
    deployments = by_kind(docs, "Deployment")
    monitors = by_kind(docs, "ServiceMonitor")
    assert set(monitors) == set(deployments)
    for name, monitor in monitors.items():
        service = services[name]
        assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
        port_names = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in port_names, (name, endpoint)
            assert endpoint["path"] == "/metrics"
    scalers = by_kind(docs, "ScaledObject")
    assert set(scalers) == set(GROUPS)
    partitions = int(by_kind(docs, "ConfigMap")["foldline-config"]["data"]["FOLDLINE_TOPIC_PARTITIONS"])
    brokers = by_kind(docs, "ConfigMap")["foldline-config"]["data"]["FOLDLINE_BROKERS"]
    for name, scaler in scalers.items():
        assert scaler["spec"]["scaleTargetRef"]["name"] in deployments
        (trigger,) = scaler["spec"]["triggers"]
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["consumerGroup"] == GROUPS[name]
        assert meta["bootstrapServers"] == brokers
        assert meta["allowIdleConsumers"] == "false"
        assert 1 <= scaler["spec"]["minReplicaCount"] <= scaler["spec"]["maxReplicaCount"] <= partitions
