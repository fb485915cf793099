# SPDX-License-Identifier: Apache-2.0
"""The Kubernetes manifests and the Helm chart: valid against the Kubernetes schemas, the
chart rendered by Helm's own engine into the same objects, and consistent with each other
(ports, labels, mounts, probes). The config they carry is checked by the agent in
tests/integration/test_kubernetes_agent.py."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from agent import __version__

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
CHART = ROOT / "deploy" / "helm" / "predis-agent"
RELEASE = "predis-agent"
NAMESPACE = "predis-agent"
# Labels the chart adds for Helm's bookkeeping; the plain manifests do without them.
HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/version")
# Kinds with no schema in kubernetes-validate (custom resources).
CUSTOM_KINDS = {"ServiceMonitor"}
SECRETS_DIR = "/run/secrets/predis-agent"
# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest schemas.
OLDEST_KUBERNETES = "1.26.0"


def _docs(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def plain() -> list[dict[str, Any]]:
    return [doc for path in sorted(K8S.glob("*.yaml")) for doc in _docs(path.read_text())]


def rendered(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with helm.Chart.load(str(CHART)) as chart:
        out = chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)
    return [doc for name, text in sorted(out.items()) if name.endswith(".yaml") for doc in _docs(text)]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [doc] = [d for d in docs if d["kind"] == kind]
    return doc


def _validate(doc: dict[str, Any]) -> None:
    for version in (OLDEST_KUBERNETES, kubernetes_validate.latest_version()):
        kubernetes_validate.validate(doc, version, strict=True)


def _strip_helm_labels(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "labels" and isinstance(value, dict):
                value = {k: v for k, v in value.items() if k not in HELM_LABELS}
            out[key] = _strip_helm_labels(value)
        return out
    if isinstance(node, list):
        return [_strip_helm_labels(item) for item in node]
    return node


def _comparable(doc: dict[str, Any]) -> dict[str, Any]:
    doc = _strip_helm_labels(doc)
    if doc["kind"] == "ConfigMap":
        doc["data"] = {key: yaml.safe_load(text) for key, text in doc["data"].items()}
    return doc


def _pod(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return by_kind(docs, "DaemonSet")["spec"]["template"]


# ---------------------------------------------------------------------------- schemas


@pytest.mark.parametrize("path", sorted(K8S.glob("*.yaml")), ids=lambda p: p.name)
def test_plain_manifests_pass_the_kubernetes_schemas(path: Path) -> None:
    docs = _docs(path.read_text())
    assert docs
    for doc in docs:
        if doc["kind"] not in CUSTOM_KINDS:
            _validate(doc)


def test_schema_validation_catches_a_misspelt_field() -> None:
    daemonset = copy.deepcopy(by_kind(plain(), "DaemonSet"))
    container = daemonset["spec"]["template"]["spec"]["containers"][0]
    container["readinessProbe"]["periodSecond"] = container["readinessProbe"].pop("periodSeconds")
    with pytest.raises(kubernetes_validate.ValidationError):
        _validate(daemonset)


def test_the_chart_lints_clean_and_its_output_passes_the_schemas() -> None:
    report = helm.lint(str(CHART), strict=True, namespace=NAMESPACE)
    assert report["errors"] == []
    # Severity 1 is INFO (an icon is recommended); warnings (2) and errors (3+) fail.
    assert [m for m in report["messages"] if m["severity"] > 1] == []
    for values in ({}, {"serviceMonitor": {"enabled": True}, "state": {"hostPath": "/var/lib/predis-agent"}}):
        docs = rendered(values)
        assert {d["kind"] for d in docs} >= {"ServiceAccount", "ConfigMap", "Service", "DaemonSet"}
        for doc in docs:
            if doc["kind"] not in CUSTOM_KINDS:
                _validate(doc)


def test_the_chart_renders_the_plain_manifests() -> None:
    chart = {(d["kind"], d["metadata"]["name"]): _comparable(d) for d in rendered({"serviceMonitor": {"enabled": True}})}
    manifests = {(d["kind"], d["metadata"]["name"]): _comparable(d) for d in plain()}
    # The chart leaves the namespace to `helm install --create-namespace` (and its Pod
    # Security label to the operator); every other object is the same.
    del manifests[("Namespace", NAMESPACE)]
    assert chart.keys() == manifests.keys()
    for key, doc in manifests.items():
        assert chart[key] == doc, key


def test_chart_and_manifests_match_the_release_and_the_oldest_kubernetes_validated() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["kubeVersion"] == f">={OLDEST_KUBERNETES}-0"
    assert chart["appVersion"] == __version__
    # The plain manifests name the same release of the CUDA image as the chart's default.
    images = {c["image"] for c in [*_pod(plain())["spec"]["initContainers"], *_pod(plain())["spec"]["containers"]]}
    assert images == {f"predis-agent:{__version__}-cuda12"}


def test_service_monitor_is_opt_in_in_the_chart() -> None:
    assert "ServiceMonitor" not in {d["kind"] for d in rendered()}


# ---------------------------------------------------------------------------- consistency


@pytest.mark.parametrize("source", ["plain", "chart"])
def test_ports_labels_and_mounts_agree(source: str) -> None:
    docs = plain() if source == "plain" else rendered({"serviceMonitor": {"enabled": True}})
    pod = _pod(docs)
    spec = pod["spec"]
    [agent] = spec["containers"]
    config = yaml.safe_load(by_kind(docs, "ConfigMap")["data"]["agent.yaml"])

    # The container ports are the ports the config listens on, on all interfaces.
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert config["agent"]["http"]["listen"] == f"0.0.0.0:{ports['http']}"
    assert config["cache"]["resp"]["listen"] == f"0.0.0.0:{ports['resp']}"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(ports["http"])

    # The Service selects the pods and names their ports; the ServiceMonitor scrapes one of them.
    service = by_kind(docs, "Service")
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports.keys()
    monitor = by_kind(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    [endpoint] = monitor["spec"]["endpoints"]
    assert endpoint["authorization"]["credentials"]["name"] == spec_secret(spec)["secretName"]

    # Every mount names a volume; the ConfigMap is mounted whole (subPath mounts are never
    # updated by the kubelet, so the file watch would not see a change).
    volumes = {v["name"]: v for v in spec["volumes"]}
    for container in [*spec["initContainers"], agent]:
        for mount in container["volumeMounts"]:
            assert mount["name"] in volumes
            assert "subPath" not in mount
    mounts = {m["mountPath"]: m["name"] for m in agent["volumeMounts"]}
    config_dir = next(path for path, name in mounts.items() if name == "config")
    assert volumes["config"]["configMap"]["name"] == by_kind(docs, "ConfigMap")["metadata"]["name"]
    assert {"name": "PREDIS_AGENT_CONFIG", "value": f"{config_dir}/agent.yaml"} in agent["env"]
    assert config["agent"]["reload"]["watch"] is True

    # Secrets: the password and the probe's token come from the Secret's mount; the scrape
    # token is not mounted.
    assert mounts[SECRETS_DIR] == "secrets"
    items = {i["key"] for i in spec_secret(spec)["items"]}
    assert items == {"tokens.json", "probe-token", "requirepass"}
    assert config["cache"]["resp"]["requirepass"] == f"${{file:{SECRETS_DIR}/requirepass}}"
    probe = agent["readinessProbe"]["exec"]["command"]
    assert probe[:3] == ["predis-agent", "probe", "readyz"]
    assert probe[probe.index("--token-file") + 1] == f"{SECRETS_DIR}/probe-token"
    assert float(probe[probe.index("--timeout") + 1]) < agent["readinessProbe"]["timeoutSeconds"]
    assert agent["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "http"}

    # The init container copies the token store to where the config points.
    [init] = spec["initContainers"]
    assert init["command"][:3] == ["install", "-m", "0600"]
    assert init["command"][3] == f"{SECRETS_DIR}/tokens.json"
    assert init["command"][4] == config["agent"]["auth"]["token_store"]
    state_dir = next(path for path, name in mounts.items() if name == "state")
    assert config["agent"]["auth"]["token_store"].startswith(state_dir + "/")


def spec_secret(spec: dict[str, Any]) -> dict[str, Any]:
    [volume] = [v for v in spec["volumes"] if "secret" in v]
    return dict(volume["secret"])


@pytest.mark.parametrize("source", ["plain", "chart"])
def test_pods_meet_the_restricted_pod_security_standard_and_ask_for_a_gpu(source: str) -> None:
    docs = plain() if source == "plain" else rendered()
    spec = _pod(docs)["spec"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] != 0
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for container in [*spec["initContainers"], *spec["containers"]]:
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"] == {"drop": ["ALL"]}
        assert container["resources"]["requests"] and container["resources"]["limits"]
    assert not [v for v in spec["volumes"] if "hostPath" in v]
    [agent] = spec["containers"]
    assert agent["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert spec["runtimeClassName"] == "nvidia"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    if source == "plain":
        namespace = by_kind(docs, "Namespace")
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_chart_values_reach_config_ports_and_volumes() -> None:
    docs = rendered(
        {
            "ports": {"http": 19470, "resp": 16390},
            "config": {"agent": {"log": {"level": "debug"}}},
            "state": {"hostPath": "/var/lib/predis-agent"},
            "image": {"repository": "registry.example/predis-agent", "tag": "1.2.3"},
            "existingSecret": "fleet-secrets",
        }
    )
    config = yaml.safe_load(by_kind(docs, "ConfigMap")["data"]["agent.yaml"])
    assert config["agent"]["http"]["listen"] == "0.0.0.0:19470"
    assert config["cache"]["resp"]["listen"] == "0.0.0.0:16390"
    assert config["agent"]["log"] == {"level": "debug", "format": "json"}
    spec = _pod(docs)["spec"]
    assert {p["containerPort"] for p in spec["containers"][0]["ports"]} == {19470, 16390}
    assert spec["containers"][0]["image"] == "registry.example/predis-agent:1.2.3"
    assert spec_secret(spec)["secretName"] == "fleet-secrets"
    state = next(v for v in spec["volumes"] if v["name"] == "state")
    assert state["hostPath"] == {"path": "/var/lib/predis-agent", "type": "DirectoryOrCreate"}
    # The chart's own keys win over values that try to move them.
    moved = rendered({"config": {"agent": {"http": {"listen": "127.0.0.1:1"}}}})
    assert yaml.safe_load(by_kind(moved, "ConfigMap")["data"]["agent.yaml"])["agent"]["http"]["listen"] == "0.0.0.0:9470"


def test_kubernetes_validate_command_line_agrees() -> None:
    # The same check as an operator would run it, on the committed files.
    paths = [str(p) for p in sorted(K8S.glob("*.yaml"))]
    proc = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "--quiet", *paths], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"user": {"uid": 0}}, "/user/uid"),
        ({"ports": {"http": "9470x"}}, "/ports/http"),
        ({"serviceMonitr": {"enabled": True}}, "serviceMonitr"),
        ({"state": {"hostPath": "relative/dir"}}, "/state/hostPath"),
    ],
)
def test_the_values_schema_rejects_mistakes(values: dict[str, Any], where: str) -> None:
    # Root, a port that is not a number, a misspelt key, a relative host path.
    with pytest.raises(helm.HelmValuesError) as info:
        rendered(values)
    assert where in str(info.value)
