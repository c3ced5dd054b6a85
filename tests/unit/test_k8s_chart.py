"""The Helm chart (deploy/helm/vectorize-worker), rendered and validated offline.

scripts/k8s_check.sh installs helm, kubeconform and the schemas when missing (once, into
~/.cache/vectorize-worker), renders the chart with its default values and with ci/all-on-values.yaml and
validates every object with ``kubeconform -strict`` against Kubernetes' schemas and KEDA's CRDs. It runs once
per test session; these tests then check what matters to a worker in the rendered objects: the settings the
pod gets load through the worker's own settings code (secrets read as files), autoscaling never above the
partitions, a grace period longer than the SIGTERM drain, the probes on the worker's endpoints.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from core.settings import ENV_PREFIX, SECRET_FIELDS, env_name, load_settings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "vectorize-worker"
SECRET_FILES = {env_name(path)[len(ENV_PREFIX) :].lower() for path in SECRET_FIELDS}

# the first test of a session runs scripts/k8s_check.sh, which builds helm and kubeconform on a new machine
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="session")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("k8s")
    env = {**os.environ, "PYTHON": sys.executable}
    run = subprocess.run(
        ["bash", str(ROOT / "scripts" / "k8s_check.sh"), str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,  # a first run builds helm (a few minutes on 2 cores)
    )
    assert run.returncode == 0, f"scripts/k8s_check.sh failed:\n{run.stdout[-4000:]}\n{run.stderr[-4000:]}"
    assert "Invalid: 0, Errors: 0, Skipped: 0" in run.stdout, run.stdout
    return out


def _tools(rendered: Path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in (rendered / "tools.env").read_text().split())


def _objects(path: Path) -> dict[tuple[str, str], dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]
    return {(d["kind"], d["metadata"]["name"]): d for d in docs}


def _one(objects: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for (k, _), o in objects.items() if k == kind]
    assert len(found) == 1, f"expected one {kind}, got {[n for (k, n) in objects if k == kind]}"
    return found[0]


def _helm(rendered: Path, *args: str) -> subprocess.CompletedProcess[str]:
    tools = _tools(rendered)
    command = [tools["HELM"], "template", "vw", str(CHART), "--kube-version", tools["KUBE_VERSION"], *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _container(objects: dict[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container


def _pod_env(objects: dict[tuple[str, str], dict[str, Any]], secrets_root: Path) -> dict[str, str]:
    """The environment the worker container gets: the ConfigMap through envFrom (with its prefix), then env."""
    container = _container(objects)
    env: dict[str, str] = {}
    for source in container["envFrom"]:
        config = objects[("ConfigMap", source["configMapRef"]["name"])]
        env.update({source["prefix"] + key: str(value) for key, value in config["data"].items()})
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:  # the downward API: the pod's IP
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
            env[item["name"]] = "10.0.0.7"
    env = {k: v.replace("$(POD_IP)", env.get("POD_IP", "")) for k, v in env.items()}
    if "VECTORIZE_WORKER_SECRETS_DIR" in env:  # the Secret's mount, laid out as Kubernetes does
        env["VECTORIZE_WORKER_SECRETS_DIR"] = str(secrets_root / env["VECTORIZE_WORKER_SECRETS_DIR"].lstrip("/"))
    return env


@pytest.mark.parametrize("values", ["default", "all-on"])
def test_the_pod_environment_is_a_valid_worker_configuration(
    rendered: Path, values: str, clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    objects = _objects(rendered / f"{values}.yaml")
    container = _container(objects)
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    secrets_root = tmp_path / "root"
    env = _pod_env(objects, secrets_root)
    # secrets: files from the Secret's keys, in the folder the pod mounts it at; never in the environment
    secret_objects = [o for (k, n), o in objects.items() if k == "Secret" and n.endswith("-secrets")]
    secret_values: dict[str, str] = {}
    if secret_objects:
        (secret,) = secret_objects
        secret_values = secret["stringData"]
        (volume,) = [v for v in pod["volumes"] if v.get("secret", {}).get("secretName") == secret["metadata"]["name"]]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
        assert mount["readOnly"] is True
        assert env["VECTORIZE_WORKER_SECRETS_DIR"] == str(secrets_root / mount["mountPath"].lstrip("/"))
        folder = Path(env["VECTORIZE_WORKER_SECRETS_DIR"])
        folder.mkdir(parents=True)
        for key, value in secret_values.items():
            assert key in SECRET_FILES, f"{key} is not a file name secrets_dir reads ({sorted(SECRET_FILES)})"
            (folder / key).write_text(value + "\n")
    for name, value in env.items():
        assert not any(name.lower().endswith(s) for s in SECRET_FILES), f"secret {name} in the environment"
        assert value not in secret_values.values(), f"{name} holds a secret's value"
    if "VECTORIZE_WORKER_KAFKA_SSL_CAFILE" in env:  # a CA bundle from extraVolumes: a real file here
        ca = tmp_path / "ca.pem"
        ca.write_text("-----BEGIN CERTIFICATE-----\n")
        env["VECTORIZE_WORKER_KAFKA_SSL_CAFILE"] = str(ca)
    for name, value in env.items():
        clean_env.setenv(name, value)

    settings = load_settings()

    assert settings.worker_id == socket.gethostname()  # "@hostname": the pod's name in Kubernetes
    assert settings.web_host == "0.0.0.0" and settings.metrics_host == "0.0.0.0"
    assert settings.web_advertised_host == "10.0.0.7"
    assert settings.tasks_topic == "vectorization-tasks"
    assert settings.metrics_port == 9091
    assert settings.models_cache_dir == env["HF_HOME"].rsplit("/", 1)[0]  # HF's cache inside the model cache
    for key, value in secret_values.items():
        field = key.split("__")
        holder = getattr(settings, field[0]) if len(field) == 2 else settings
        assert getattr(holder, field[-1]).get_secret_value() == value, key
    if values == "all-on":
        assert settings.web_auth_token is not None and settings.kafka_sasl_username == "vectorizer"


@pytest.mark.parametrize("values", ["default", "all-on"])
def test_probes_ports_and_the_grace_period(rendered: Path, values: str) -> None:
    objects = _objects(rendered / f"{values}.yaml")
    config = _one(objects, "ConfigMap")["data"]
    container = _container(objects)
    pod = _one(objects, "Deployment")["spec"]["template"]["spec"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"web": int(config["WEB_PORT"]), "metrics": 9091}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "web"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "web"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "web"}
    annotations = _one(objects, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == "9091" and annotations["prometheus.io/scrape"] == "true"
    # SIGTERM -> the drain (SHUTDOWN_TIMEOUT) -> commit and leave: all before SIGKILL
    pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    assert pod["terminationGracePeriodSeconds"] > pre_stop + float(config["SHUTDOWN_TIMEOUT"]) + 10
    assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
    pdb = _one(objects, "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"] == _one(objects, "Deployment")["spec"]["selector"]["matchLabels"]
    if values == "all-on":
        assert pre_stop == 5 and pod["terminationGracePeriodSeconds"] == 5 + 45 + 30
        claim = _one(objects, "PersistentVolumeClaim")
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # one model cache for every worker
        (models,) = [v for v in pod["volumes"] if v["name"] == "models"]
        assert models["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
        (mount,) = [m for m in container["volumeMounts"] if m["name"] == "models"]
        assert mount["mountPath"] == config["MODELS_CACHE_DIR"]


def test_keda_scales_on_the_groups_lag_never_above_the_partitions(rendered: Path) -> None:
    assert not [k for (k, _) in _objects(rendered / "default.yaml") if k in ("ScaledObject", "TriggerAuthentication")]
    objects = _objects(rendered / "all-on.yaml")
    config = _one(objects, "ConfigMap")["data"]
    scaled = _one(objects, "ScaledObject")["spec"]
    deployment = _one(objects, "Deployment")
    assert "replicas" not in deployment["spec"]  # KEDA owns the count
    assert scaled["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert scaled["minReplicaCount"] <= scaled["maxReplicaCount"] <= int(config["TOPIC_PARTITIONS"])
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "kafka"
    meta = trigger["metadata"]
    assert meta["topic"] == config["TASKS_TOPIC"] == "vectorization-tasks"
    assert meta["consumerGroup"] == config["KAFKA_GROUP_ID"]
    assert meta["bootstrapServers"] == config["KAFKA_BOOTSTRAP_SERVERS"]
    assert int(meta["lagThreshold"]) >= 1 and meta["allowIdleConsumers"] == "false"
    # the scaler logs in as the workers do: the same password key of the same Secret
    auth = objects[("TriggerAuthentication", trigger["authenticationRef"]["name"])]["spec"]["secretTargetRef"]
    refs = {r["parameter"]: r for r in auth}
    assert refs["password"]["key"] == "kafka_sasl_password"
    assert refs["password"]["name"] == next(n for (k, n) in objects if k == "Secret" and n.endswith("-secrets"))
    keda_secret = objects[("Secret", refs["sasl"]["name"])]["stringData"]
    assert keda_secret == {"tls": "enable", "sasl": "scram_sha512", "username": "vectorizer"}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--set", "keda.enabled=true", "--set", "keda.maxReplicaCount=5"],
            "keda.maxReplicaCount (5) is above topicPartitions (4)",
        ),
        (["--set", "replicaCount=9"], "replicaCount (9) is above topicPartitions (4)"),
        (["--set", "terminationGracePeriodSeconds=30"], "terminationGracePeriodSeconds (30) is not above"),
        (
            ["--set", "config.WEB_AUTH_TOKEN=x"],
            "config.WEB_AUTH_TOKEN is a secret setting: put it under secrets.values.web_auth_token",
        ),
        (["--set", "config.REDIS_PASSWORD_FILE=/x"], "config.REDIS_PASSWORD_FILE is a secret setting"),
        (["--set", "config.SHUTDOWN_TIMEOUT=5"], "config.SHUTDOWN_TIMEOUT is set by the chart"),
        (["--set", "secrets.values.api_key=x"], "secrets.values.api_key is not a secret setting of the worker"),
        (["--set", "kafka.securityProtocol=SASL_SSL"], "kafka.saslUsername is empty"),
    ],
)
def test_values_that_cannot_work_stop_the_render(rendered: Path, args: list[str], message: str) -> None:
    run = _helm(rendered, *args)
    assert run.returncode != 0 and message in run.stderr, run.stderr or run.stdout[:500]


def test_the_partition_cap_follows_topic_partitions(rendered: Path) -> None:
    run = _helm(rendered, "--set", "keda.enabled=true", "--set", "topicPartitions=8", "--set", "keda.maxReplicaCount=8")
    assert run.returncode == 0, run.stderr
    objects = {d["kind"]: d for d in yaml.safe_load_all(run.stdout) if d}
    assert objects["ScaledObject"]["spec"]["maxReplicaCount"] == 8
    assert objects["ConfigMap"]["data"]["TOPIC_PARTITIONS"] == "8"
    assert "authenticationRef" not in objects["ScaledObject"]["spec"]["triggers"][0]  # PLAINTEXT: no credentials


def test_kubeconform_refuses_what_the_cluster_would(rendered: Path, tmp_path: Path) -> None:
    """The validation is real: a misspelt Deployment field and a wrong ScaledObject field are caught."""
    tools = _tools(rendered)
    text = (rendered / "all-on.yaml").read_text()
    broken = text.replace("terminationGracePeriodSeconds:", "terminationGracePeriodSecond:").replace(
        "  maxReplicaCount: 12", "  maxReplicas: 12"
    )
    assert broken != text
    (tmp_path / "broken.yaml").write_text(broken)
    cache = Path(tools["HELM"]).parents[2] / "k8s-schemas"
    run = subprocess.run(
        [
            tools["KUBECONFORM"],
            "-strict",
            "-kubernetes-version",
            tools["KUBE_VERSION"],
            "-schema-location",
            str(cache) + "/{{ .NormalizedKubernetesVersion }}-local-strict/{{ .ResourceKind }}{{ .KindSuffix }}.json",
            "-schema-location",
            str(next(cache.glob("keda-v*"))) + "/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json",
            str(tmp_path / "broken.yaml"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1, run.stdout + run.stderr
    assert "'terminationGracePeriodSecond' not allowed" in run.stdout
    assert "'maxReplicas' not allowed" in run.stdout
