"""The Kubernetes and KServe manifests in deploy/k8s/, checked offline.

Core objects are validated with kubernetes-validate (Kubernetes' own OpenAPI schemas,
strict: an unknown field fails); the KServe ones against the subset of KServe's CRD schemas
in ``kserve_crd_subset.json`` (see ``extract_kserve_schema.py``), made strict the same way.
Then the manifests are read against the code they deploy: probe paths against the app's
routes, container args through the real ``dlforge serve`` command, env names against
``ServeSettings``, the uid against the Dockerfile. ``test_k8s_pod.py`` runs the server with
the Deployment's disks (read-only root).
"""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from tests.deploy.extract_kserve_schema import prune
from tests.deploy.test_deploy_files import dockerfile_instructions, image_user_ids

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KSERVE = K8S / "kserve"
# 1.31: the oldest release these manifests claim (preStop `sleep` is on by default since 1.30);
# 1.35: a recent one.
K8S_VERSIONS = ("1.31.0", "1.35.0")
CORE_KINDS = {"Secret", "PersistentVolumeClaim", "Deployment", "Service", "HorizontalPodAutoscaler",
              "PodDisruptionBudget"}


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def resources(folder: Path) -> list[Path]:
    return [folder / name for name in load(folder / "kustomization.yaml")["resources"]]


@pytest.fixture(scope="module")
def core() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in map(load, resources(K8S))}


@pytest.fixture(scope="module")
def kserve() -> dict[str, dict]:
    return {doc["kind"]: doc for doc in map(load, resources(KSERVE))}


def server_container(core: dict[str, dict]) -> dict:
    (container,) = core["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


def runtime_container(kserve: dict[str, dict]) -> dict:
    (container,) = kserve["ServingRuntime"]["spec"]["containers"]
    return container


# ---------------------------------------------------------------- schemas

def test_kustomizations_list_every_manifest(core: dict, kserve: dict) -> None:
    listed = {p.name for p in resources(K8S)}
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(core) == CORE_KINDS
    assert {p.name for p in resources(KSERVE)} == {p.name for p in KSERVE.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kserve) == {"ServingRuntime", "InferenceService"}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("kind", sorted(CORE_KINDS))
def test_core_manifests_validate_strictly(core: dict, kind: str, version: str) -> None:
    try:
        kubernetes_validate.validate(core[kind], version, strict=True)
    except kubernetes_validate.ValidationError as err:  # its str() dumps the whole schema
        pytest.fail(f"{kind} on Kubernetes {version}: {err.message} at {list(err.absolute_path)}")


def test_strict_validation_rejects_a_misspelled_field(core: dict) -> None:
    bad = copy.deepcopy(core["Deployment"])
    container = bad["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """A CRD's OpenAPI schema as a JSON Schema that, like ``kubectl apply --validate=strict``,
    refuses fields it does not declare (objects without ``x-kubernetes-preserve-unknown-fields``)."""
    out = dict(schema)
    if "properties" in schema:
        out["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(schema.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(schema["additionalProperties"])
    if "items" in schema:
        out["items"] = strict(schema["items"])
    if "anyOf" in schema:
        out["anyOf"] = [strict(sub) for sub in schema["anyOf"]]
    if schema.get("nullable") and "type" in schema:
        out["type"] = [schema["type"], "null"]
    return out


def test_strict_closes_objects_at_every_depth() -> None:
    schema = strict({"type": "object", "properties": {"a": {"type": "array", "items": {
        "type": "object", "properties": {"type": {"type": "string"}}}}}})
    jsonschema.validate({"a": [{"type": "x"}]}, schema)
    with pytest.raises(jsonschema.ValidationError, match="'typo' was unexpected"):
        jsonschema.validate({"a": [{"typo": "x"}]}, schema)


@pytest.fixture(scope="module")
def kserve_schemas() -> dict[str, dict]:
    subset = json.loads((Path(__file__).with_name("kserve_crd_subset.json")).read_text(encoding="utf-8"))
    assert subset["source"].startswith("https://github.com/kserve/kserve/")
    return subset["crds"]


@pytest.mark.parametrize("kind", ["ServingRuntime", "InferenceService"])
def test_kserve_manifests_match_the_crd_schema(kserve: dict, kserve_schemas: dict, kind: str) -> None:
    assert kserve[kind]["apiVersion"] == kserve_schemas[kind]["apiVersion"]
    jsonschema.validate(kserve[kind], strict(kserve_schemas[kind]["schema"]))


@pytest.mark.parametrize("kind, path, value", [
    ("InferenceService", ["spec", "predictor", "model", "modelFormat", "nme"], "dlforge"),  # unknown field
    ("InferenceService", ["spec", "predictor", "scaleMetric"], "gpu"),  # not in the CRD's enum
    ("ServingRuntime", ["spec", "supportedModelFormats", 0, "priority"], 0),  # minimum 1
    ("ServingRuntime", ["spec", "containers", 0, "imagePullPolice"], "Always"),  # a pod-spec typo
])
def test_kserve_schema_rejects_what_kserve_would(kserve: dict, kserve_schemas: dict, kind: str,
                                                  path: list, value: Any) -> None:
    bad = copy.deepcopy(kserve[kind])
    node = bad
    for step in path[:-1]:
        node = node[step]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, strict(kserve_schemas[kind]["schema"]))


def test_prune_keeps_names_and_the_schemas_in_use() -> None:
    schema = {"type": "object", "description": "drop", "required": ["a"], "properties": {
        "a": {"type": "string", "enum": ["x"]}, "b": {"type": "object", "properties": {"c": {"type": "string"}}},
        "d": {"type": "array", "items": {"type": "object", "properties": {"e": {"type": "integer"}}}}}}
    assert prune(schema, [{"a": "x", "d": [{"e": 1}]}]) == {"type": "object", "required": ["a"], "properties": {
        "a": {"type": "string", "enum": ["x"]}, "b": {"type": "object"},
        "d": {"type": "array", "items": {"type": "object", "properties": {"e": {"type": "integer"}}}}}}


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl (with its built-in kustomize) not installed")
@pytest.mark.parametrize("folder", [K8S, KSERVE], ids=["core", "kserve"])
def test_kustomize_renders_the_listed_objects(folder: Path) -> None:
    out = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True, timeout=60,
                         check=True).stdout
    rendered = sorted((d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out))
    assert rendered == sorted((d["kind"], d["metadata"]["name"]) for d in map(load, resources(folder)))
    assert "image: dlforge:latest" in out  # the images: entry matches the name the manifests use


# ---------------------------------------------------------------- against the code

@pytest.fixture(scope="module")
def app_paths() -> dict[str, dict]:
    from dlforge.serve.main import create_app
    from dlforge.serve.settings import ServeSettings

    return create_app(ServeSettings(require_keys=False)).openapi()["paths"]


def probe_ports(container: dict) -> dict[str, int]:
    by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
    out = {}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe in container:
            port = container[probe]["httpGet"]["port"]
            out[probe] = by_name[port] if isinstance(port, str) else port
    return out


@pytest.mark.parametrize("which", ["deployment", "runtime"])
def test_probes_ask_routes_the_app_serves(core: dict, kserve: dict, app_paths: dict, which: str) -> None:
    container = server_container(core) if which == "deployment" else runtime_container(kserve)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"  # 503 until the models load
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"  # the process only
    if which == "deployment":
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe in container:
            assert "get" in app_paths[container[probe]["httpGet"]["path"]], probe
    (port,) = {p["containerPort"] for p in container["ports"]}
    assert set(probe_ports(container).values()) == {port}


def serve_settings(container: dict, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The ServeSettings that ``dlforge <command[1:]> <args>`` builds; the server itself is not started."""
    import dlforge.cli
    import dlforge.serve.server

    captured = []
    monkeypatch.setattr(dlforge.serve.server, "run", lambda settings, **_: captured.append(settings))
    argv = container["command"][1:] + container["args"]
    result = CliRunner().invoke(dlforge.cli.app, argv)
    assert result.exit_code == 0, result.output
    (settings,) = captured
    return settings


def test_deployment_args_parse_with_dlforge_serve(core: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    container = server_container(core)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["scripts"]
    assert scripts[container["command"][0]] == "dlforge.cli:app"  # the app serve_settings invokes
    settings = serve_settings(container, monkeypatch)
    assert (settings.host, settings.port) == ("0.0.0.0", container["ports"][0]["containerPort"])
    assert settings.require_keys and settings.registry is None  # the URL comes from the env, not argv
    with pytest.raises(AssertionError, match="No such option"):  # the check can fail
        serve_settings({**container, "args": container["args"] + ["--max-batch"]}, monkeypatch)


def test_runtime_args_serve_the_inference_service_model(kserve: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    container = runtime_container(kserve)
    name = kserve["InferenceService"]["metadata"]["name"]
    # KServe fills Go-template placeholders from the InferenceService's metadata.
    filled = {**container, "args": [a.replace("{{.Name}}", name) for a in container["args"]]}
    settings = serve_settings(filled, monkeypatch)
    assert settings.models == [name] and settings.require_keys
    assert (settings.host, settings.port) == ("0.0.0.0", container["ports"][0]["containerPort"])


@pytest.mark.parametrize("which", ["deployment", "runtime"])
def test_env_names_are_settings_the_server_reads(core: dict, kserve: dict, which: str) -> None:
    from dlforge.serve.settings import ServeSettings

    container = server_container(core) if which == "deployment" else runtime_container(kserve)
    env = {e["name"]: e for e in container["env"]}
    dlforge_env = {n for n in env if n.startswith("DLFORGE_")}
    # what Registry() reads, and the keys dlforge serve provisions at start-up
    assert dlforge_env == {"DLFORGE_REGISTRY", "DLFORGE_ARTIFACTS", "DLFORGE_ADMIN_KEYS", "DLFORGE_PREDICT_KEYS"}
    for name in dlforge_env:
        assert name.removeprefix("DLFORGE_").lower() in ServeSettings.model_fields, name
    for name in ("DLFORGE_REGISTRY", "DLFORGE_ADMIN_KEYS", "DLFORGE_PREDICT_KEYS"):
        assert "secretKeyRef" in env[name]["valueFrom"], name  # passwords and keys stay in the Secret
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["DLFORGE_ARTIFACTS"]["value"] in mounts  # on the shared volume, not the read-only root
    # torch's threads match the CPU limit, not the node's core count
    assert set(env) - dlforge_env == {"OMP_NUM_THREADS"}
    assert env["OMP_NUM_THREADS"]["value"] == container["resources"]["limits"]["cpu"]


def test_secret_holds_what_the_containers_reference(core: dict, kserve: dict) -> None:
    secret = core["Secret"]
    data = secret["stringData"]
    refs = [e["valueFrom"]["secretKeyRef"] for c in (server_container(core), runtime_container(kserve))
            for e in c["env"] if "secretKeyRef" in e.get("valueFrom", {})]
    assert refs
    for ref in refs:
        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in data
    url = make_url(data["registry-url"])
    assert url.drivername == "postgresql+psycopg"  # psycopg 3, a dlforge dependency
    from dlforge.registry.store import Registry

    for name in ("admin-keys", "predict-keys"):  # placeholders a key store would accept in form
        for key in data[name].split(","):
            Registry("sqlite://").provision_key(key.strip())
    assert all("CHANGE-ME" in value for value in data.values())  # placeholders only, nothing real


def test_labels_and_selectors_agree(core: dict) -> None:
    deployment = core["Deployment"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    pod = deployment["spec"]["template"]
    assert selector.items() <= pod["metadata"]["labels"].items()
    assert core["Service"]["spec"]["selector"] == selector
    assert core["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == selector
    for spread in pod["spec"]["topologySpreadConstraints"]:
        assert spread["labelSelector"]["matchLabels"] == selector
    target = core["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"], deployment["kind"], deployment["metadata"]["name"])
    port_names = {p["name"] for p in server_container(core)["ports"]}
    assert {p["targetPort"] for p in core["Service"]["spec"]["ports"]} <= port_names


def test_scaling_and_disruption_budget_fit_together(core: dict) -> None:
    hpa, pdb = core["HorizontalPodAutoscaler"]["spec"], core["PodDisruptionBudget"]["spec"]
    assert "replicas" not in core["Deployment"]["spec"]  # the HPA owns it; an apply must not reset it
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
    assert pdb["minAvailable"] < hpa["minReplicas"] <= hpa["maxReplicas"]  # a drain can always proceed
    assert core["Deployment"]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    claim = core["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every replica reads every upload
    volumes = core["Deployment"]["spec"]["template"]["spec"]["volumes"]
    assert claim["metadata"]["name"] in [v.get("persistentVolumeClaim", {}).get("claimName") for v in volumes]


def quantity(value: str | int) -> float:
    """A Kubernetes CPU or memory quantity as a number: ``"500m"`` -> 0.5, ``"1Gi"`` -> 2**30."""
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9}
    text = str(value)
    for suffix in sorted(units, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * units[suffix]
    return float(text)


@pytest.mark.parametrize("which", ["deployment", "runtime"])
def test_security_context_and_resources(core: dict, kserve: dict, which: str) -> None:
    uid, gid = image_user_ids(dockerfile_instructions((ROOT / "deploy" / "Dockerfile").read_text(encoding="utf-8")))
    if which == "deployment":
        pod_spec = core["Deployment"]["spec"]["template"]["spec"]
        container, volumes = server_container(core), pod_spec["volumes"]
        pod = pod_spec["securityContext"]
        assert pod["runAsNonRoot"] and (pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (uid, gid, gid)
        assert pod_spec["automountServiceAccountToken"] is False
    else:
        container, volumes = runtime_container(kserve), kserve["ServingRuntime"]["spec"]["volumes"]
        assert kserve["InferenceService"]["spec"]["predictor"]["securityContext"]["fsGroup"] == gid
    ctx = container["securityContext"]
    assert ctx["runAsNonRoot"] and ctx.get("runAsUser", uid) == uid and uid != 0
    assert ctx["allowPrivilegeEscalation"] is False and ctx["readOnlyRootFilesystem"] is True
    assert ctx["capabilities"] == {"drop": ["ALL"]}
    by_name = {v["name"]: v for v in volumes}
    mounts = {m["mountPath"]: by_name[m["name"]] for m in container["volumeMounts"]}
    assert "emptyDir" in mounts["/tmp"]  # tempfile's default; the only writable path besides artifacts
    assert set(mounts) == {"/tmp", "/data/artifacts"}
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    for resource in ("cpu", "memory"):
        assert 0 < quantity(requests[resource]) <= quantity(limits[resource]), resource


def test_quantity_reads_kubernetes_units() -> None:
    assert (quantity("500m"), quantity("2"), quantity("1Gi"), quantity(3)) == (0.5, 2.0, 2**30, 3.0)


def test_kserve_runtime_speaks_v2_for_the_inference_service(kserve: dict) -> None:
    runtime, isvc = kserve["ServingRuntime"], kserve["InferenceService"]
    model = isvc["spec"]["predictor"]["model"]
    assert runtime["spec"]["protocolVersions"] == ["v2"] and model["protocolVersion"] == "v2"
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {(f["name"], f["version"]) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"]["version"]) in formats
    assert model["modelFormat"]["name"] == "dlforge"
    container = runtime_container(kserve)
    assert container["name"] == "kserve-container"  # the container KServe merges the predictor into
    port = container["ports"][0]["containerPort"]
    assert container["args"][container["args"].index("--port") + 1] == str(port)
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == str(port)
    assert "storageUri" not in model  # models come from the registry, not a storage initializer
