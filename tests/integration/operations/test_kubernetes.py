"""deploy/kubernetes, checked without a cluster: the core kinds (Deployments, Services, PodDisruptionBudgets, the
Secret, the ConfigMap the kustomization makes) against Kubernetes' own schemas (kubernetes-validate, strict: no
unknown fields); the config the ConfigMap carries loads as sdapi's config, with the Secret's variables; every
metric and label the KEDA ScaledObject queries is in a running service's /metrics; every environment variable the
pods get is one sdapi reads."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from sdapi import config as sdapi_config
from sdapi.config import config_from_mapping

KUBERNETES = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes"
# The Kubernetes version the manifests are written for (the newest kubernetes-validate ships schemas of).
VERSION = "1.37.0"


def _documents() -> list[dict]:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    documents = []
    for resource in kustomization["resources"]:
        documents += [doc for doc in yaml.safe_load_all((KUBERNETES / resource).read_text()) if doc]
    for generated in kustomization["configMapGenerator"]:  # what `kubectl apply -k` makes of config.yaml
        data = {name: (KUBERNETES / name).read_text() for name in generated["files"]}
        documents.append(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": generated["name"]}, "data": data}
        )
    return documents


def _of_kind(kind: str) -> list[dict]:
    return [doc for doc in _documents() if doc["kind"] == kind]


def test_the_core_kinds_are_valid_kubernetes():
    kinds = set()
    for document in _documents():
        if document["apiVersion"].startswith("keda.sh/"):
            continue  # a custom resource: kubernetes-validate has no schema for KEDA's CRDs
        kubernetes_validate.validate(document, VERSION, strict=True)
        kinds.add(document["kind"])
    assert kinds == {"Deployment", "Service", "PodDisruptionBudget", "Secret", "ConfigMap"}


def test_the_workers_ask_for_a_gpu_and_the_api_is_probed_on_health():
    deployments = {doc["metadata"]["name"]: doc for doc in _of_kind("Deployment")}
    [worker] = deployments["sdapi-worker"]["spec"]["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert worker["args"][:2] == ["sdapi", "worker"]
    [api] = deployments["sdapi-api"]["spec"]["template"]["spec"]["containers"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/health" and "livenessProbe" in api
    assert api["args"][:4] == ["sdapi", "serve", "--role", "api"]


def test_the_configmap_is_sdapi_config_and_the_secret_its_environment():
    [configmap] = _of_kind("ConfigMap")
    raw = yaml.safe_load(configmap["data"]["config.yaml"])
    [secret] = _of_kind("Secret")
    environment = dict(secret["stringData"])
    read = {value for name, value in vars(sdapi_config).items() if name.startswith("ENV_")}
    assert set(environment) <= read, set(environment) - read
    config = config_from_mapping(raw, environ=environment)  # strict: an unknown key fails here
    assert config.store.backend == "postgres" and config.storage.backend == "minio"
    assert config.metrics.port == 9100
    for deployment in _of_kind("Deployment"):
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert {"secretRef": {"name": secret["metadata"]["name"]}} in container["envFrom"]
        assert 9100 in {port["containerPort"] for port in container["ports"]}


@pytest.fixture(scope="module")
def metrics(make_service) -> str:
    service = make_service("kubernetes-metrics")
    with service.client() as client:
        client.get("/health")
    return httpx.get(f"{service.url}/metrics").text


def test_every_metric_and_label_the_scaledobject_queries_is_exported(metrics):
    [scaled] = _of_kind("ScaledObject")
    assert scaled["spec"]["scaleTargetRef"]["name"] == "sdapi-worker"
    [trigger] = scaled["spec"]["triggers"]
    query = trigger["metadata"]["query"]
    exported = {
        (sample.name, tuple(sorted(sample.labels.items())))
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
    }
    selectors = re.findall(r"([a-z_]+)\{([^}]*)\}", query)
    assert selectors, query
    for name, matchers in selectors:
        labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', matchers)))
        assert any(
            sample_name == name and set(labels) <= set(sample_labels) for sample_name, sample_labels in exported
        ), (name, labels)
