"""deploy/kubernetes: valid against the Kubernetes API schemas, and wired as recgate needs
(replicas, probes, a migration Job, settings production accepts once the Secret is filled in)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from pydantic import ValidationError

from tests.deploy.settings_env import (
    PLACEHOLDER,
    SETTINGS_VARIABLES,
    commented_settings,
    real_value,
    settings_from,
    variables_named,
)

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "deploy" / "kubernetes"
KUSTOMIZATION = MANIFESTS / "kustomization.yaml"
# A version kubernetes-validate ships schemas for; strict refuses fields the API does not know.
KUBERNETES_VERSION = "1.30.0"

Document = dict[str, Any]


def _kustomization() -> Document:
    loaded: Document = yaml.safe_load(KUSTOMIZATION.read_text())
    return loaded


def _resource_files() -> list[Path]:
    return [MANIFESTS / name for name in _kustomization()["resources"]]


def _documents() -> list[tuple[Path, Document]]:
    return [
        (path, document)
        for path in _resource_files()
        for document in yaml.safe_load_all(path.read_text())
        if document is not None
    ]


def _one(kind: str) -> Document:
    found = [document for _, document in _documents() if document["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def _pod_spec(kind: str) -> Document:
    spec: Document = _one(kind)["spec"]["template"]["spec"]
    return spec


def _container(kind: str) -> Document:
    containers: list[Document] = _pod_spec(kind)["containers"]
    assert len(containers) == 1
    return containers[0]


def _image(reference: str) -> str:
    """The image a kustomize build runs, after kustomization.yaml's `images:` overrides."""
    name, _, tag = reference.partition(":")
    for override in _kustomization().get("images", []):
        if override["name"] == name:
            name = override.get("newName", name)
            tag = override.get("newTag", tag)
    return f"{name}:{tag}" if tag else name


def _matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _container_port(container: Document, port: int | str) -> int:
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container["ports"] if "name" in p}
    assert port in by_name, f"no container port named {port!r}"
    return int(by_name[port])


def _validate(document: Document, where: str) -> None:
    problem = None
    try:
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)
    except jsonschema.ValidationError as exc:  # what kubernetes_validate.validate raises
        problem = f"{where}: {exc.json_path}: {exc.message}"
    # Outside the except: the schema itself, chained to the failure, runs to pages.
    if problem is not None:
        pytest.fail(problem)


def test_the_kustomization_lists_every_manifest() -> None:
    listed = {path.name for path in _resource_files()}
    present = {path.name for path in MANIFESTS.glob("*.yaml")} - {KUSTOMIZATION.name}
    assert listed == present
    kinds = {document["kind"] for _, document in _documents()}
    assert {
        "Deployment",
        "Job",
        "Secret",
        "ConfigMap",
        "Service",
        "PodDisruptionBudget",
    } <= kinds


def test_every_manifest_is_valid_against_the_kubernetes_schemas() -> None:
    documents = _documents()
    assert documents
    for path, document in documents:
        _validate(document, f"{path.name}: {document['kind']}/{document['metadata']['name']}")


def test_the_kustomize_build_is_valid_too() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomize build is not checked")
    built = subprocess.run(
        [kubectl, "kustomize", str(MANIFESTS)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert built.returncode == 0, built.stderr
    documents = [d for d in yaml.safe_load_all(built.stdout) if d is not None]
    assert len(documents) == len(_documents())
    for document in documents:
        where = f"kustomize build: {document['kind']}/{document['metadata']['name']}"
        _validate(document, where)
        if document["kind"] != "Namespace":
            assert document["metadata"]["namespace"] == _kustomization()["namespace"], where


def test_the_deployment_runs_two_replicas_or_more_behind_a_disruption_budget() -> None:
    deployment = _one("Deployment")
    assert deployment["spec"]["replicas"] >= 2
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert _matches(deployment["spec"]["selector"]["matchLabels"], pod_labels)
    budget = _one("PodDisruptionBudget")
    assert budget["spec"]["minAvailable"] == 1
    assert _matches(budget["spec"]["selector"]["matchLabels"], pod_labels)


def test_probes_point_at_livez_and_readyz_on_the_container_port() -> None:
    container = _container("Deployment")
    port = _container_port(container, "http")
    liveness = container["livenessProbe"]["httpGet"]
    readiness = container["readinessProbe"]["httpGet"]
    assert liveness["path"] == "/livez"
    assert readiness["path"] == "/readyz"
    assert _container_port(container, liveness["port"]) == port
    assert _container_port(container, readiness["port"]) == port
    # recgate listens where the probes look.
    assert int(_one("ConfigMap")["data"]["RECGATE_PORT"]) == port


def test_the_service_reaches_the_server_pods_and_not_the_migration() -> None:
    service = _one("Service")
    selector = service["spec"]["selector"]
    server_labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    job_labels = _one("Job")["spec"]["template"]["metadata"]["labels"]
    assert _matches(selector, server_labels)
    assert not _matches(selector, job_labels)
    container = _container("Deployment")
    (service_port,) = service["spec"]["ports"]
    assert _container_port(container, service_port["targetPort"]) == _container_port(
        container, "http"
    )


def test_the_job_runs_recgate_migrate_and_the_deployment_does_not() -> None:
    job = _container("Job")
    assert [*job.get("command", []), *job.get("args", [])] == ["recgate", "migrate"]
    assert _pod_spec("Job")["restartPolicy"] in ("Never", "OnFailure")
    server = _container("Deployment")
    assert "migrate" not in [*server.get("command", []), *server.get("args", [])]
    # The migration reads the same settings as the service, to reach the same database.
    assert job["envFrom"] == server["envFrom"]


@pytest.mark.parametrize("kind", ["Deployment", "Job"])
def test_pods_run_unprivileged_on_a_read_only_root(kind: str) -> None:
    uid = int(re.findall(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)[-1])
    pod = _pod_spec(kind)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    # A Service named recgate would otherwise inject RECGATE_PORT=tcp://... and break settings.
    assert pod["enableServiceLinks"] is False
    container = _container(kind)
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    empty_dirs = {v["name"] for v in pod["volumes"] if "emptyDir" in v}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts.get("/tmp") in empty_dirs, "temporary files need a writable /tmp"
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_settings_come_from_the_configmap_and_the_secret() -> None:
    config_map, secret = _one("ConfigMap"), _one("Secret")
    for kind in ("Deployment", "Job"):
        refs = _container(kind)["envFrom"]
        assert {"configMapRef": {"name": config_map["metadata"]["name"]}} in refs
        assert {"secretRef": {"name": secret["metadata"]["name"]}} in refs
    secret_data = secret["stringData"]
    assert {
        "RECGATE_DATABASE_URL",
        "RECGATE_AUDIT_KEY",
        "RECGATE_GENERIC_WEBHOOK_SECRET",
    } <= set(secret_data)
    assert not set(secret_data) & set(config_map["data"]), "a setting in both"
    # A template: nothing in it may be a real secret.
    for name, value in secret_data.items():
        assert PLACEHOLDER in value, f"{name} in the Secret template is not a placeholder"


def test_every_variable_named_is_a_recgate_setting() -> None:
    for path in sorted(MANIFESTS.glob("*.yaml")):
        unknown = variables_named(path.read_text()) - SETTINGS_VARIABLES
        assert not unknown, f"{path.name} names variables recgate does not read: {unknown}"


def test_production_refuses_the_secret_until_each_placeholder_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config: dict[str, str] = _one("ConfigMap")["data"]
    template: dict[str, str] = _one("Secret")["stringData"]
    filled = {name: real_value(value) for name, value in template.items()}

    settings = settings_from({**config, **filled}, monkeypatch)
    assert settings.env == "production"
    assert not settings.sim_enabled
    # More than one replica: one shared database and one shared media store.
    assert settings.database_url.startswith("postgresql+asyncpg://")
    assert settings.media_store == "s3"

    with pytest.raises(ValidationError):
        settings_from({**config, **template}, monkeypatch)
    shown = {**template, **commented_settings((MANIFESTS / "secret.yaml").read_text())}
    placeholders = [name for name, value in shown.items() if value == PLACEHOLDER]
    assert {"RECGATE_AUDIT_KEY", "RECGATE_GENERIC_WEBHOOK_SECRET"} <= set(placeholders)
    for name in placeholders:
        if name.startswith("RECGATE_"):
            with pytest.raises(ValidationError):
                settings_from({**config, **filled, name: PLACEHOLDER}, monkeypatch)


def test_the_image_is_the_one_compose_builds() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    built = compose["services"]["recgate"]["image"]
    for kind in ("Deployment", "Job"):
        assert _image(_container(kind)["image"]) == built, kind
