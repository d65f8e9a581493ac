"""deploy/ (SPEC §8): the manifests parse, agree with each other and with the product.

No Docker engine or cluster is needed: the files are read and cross-checked (ports, probe paths,
the config path, selectors, the HPA target), and every edgeproxy configuration they carry, embedded
ConfigMaps included, goes through the real parser `edgeproxy.config.loads`.
"""

from __future__ import annotations

import json
import posixpath
import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from edgeproxy import __version__
from edgeproxy.config import Config, loads

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CONFIG_PATH = "/etc/edgeproxy/edgeproxy.toml"
PORT = 8080
IMAGE = f"edgeproxy:{__version__}"
SECRET_NAME = "edgeproxy-provider-keys"
GRACE_S = 45
LOOPBACK = {"127.0.0.1", "::1", "localhost"}


# ---------------------------------------------------------------- helpers


def yaml_docs(path: Path) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]
    assert docs, f"{path} holds no YAML document"
    for d in docs:
        assert isinstance(d, dict), f"{path}: a document is not a mapping"
    return docs


def k8s_objects(sub: str) -> dict[tuple[str, str], dict[str, Any]]:
    """All objects under deploy/k8s/<sub>, by (kind, name)."""
    files = sorted((DEPLOY / "k8s" / sub).glob("*.yaml"))
    assert files, f"no manifests in deploy/k8s/{sub}"
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for f in files:
        for d in yaml_docs(f):
            key = (d["kind"], d["metadata"]["name"])
            assert key not in out, f"{f.name}: {key} defined twice"
            out[key] = d
    return out


def one(objs: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for (k, _), o in objs.items() if k == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def of_kind(objs: dict[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {name: o for (k, name), o in objs.items() if k == kind}


def edgeproxy_container(pod: dict[str, Any]) -> dict[str, Any]:
    """The container running the edgeproxy image: an app container or a native sidecar."""
    found = [
        c
        for c in pod.get("containers", []) + pod.get("initContainers", [])
        if str(c.get("image", "")).split(":")[0].rsplit("/", 1)[-1] == "edgeproxy"
    ]
    assert len(found) == 1, f"expected one edgeproxy container, found {len(found)}"
    c = found[0]
    if c in pod.get("initContainers", []):
        assert c.get("restartPolicy") == "Always", "an edgeproxy init container must be a sidecar"
    return c


def config_arg(argv: list[str]) -> str:
    assert "--config" in argv, f"no --config in {argv}"
    return argv[argv.index("--config") + 1]


def mounted_config(
    pod: dict[str, Any], container: dict[str, Any], configmaps: dict[str, dict[str, Any]]
) -> str:
    """Follow --config → volumeMount → volume → ConfigMap key; return the TOML text."""
    assert "command" not in container or container["command"][0].endswith("edgeproxy")
    argv = list(container.get("command", [])[1:]) + list(container.get("args", []))
    assert argv[:1] == ["serve"], f"edgeproxy is not told to serve: {argv}"
    path = PurePosixPath(config_arg(argv))
    assert str(path) == CONFIG_PATH
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    hits = []
    for m in container.get("volumeMounts", []):
        mount = PurePosixPath(m["mountPath"])
        if "subPath" in m and mount == path:
            hits.append((m, m["subPath"]))
        elif "subPath" not in m and path.parent == mount:
            hits.append((m, path.name))
    assert len(hits) == 1, f"{path} is not mounted exactly once"
    mount, rel = hits[0]
    assert mount.get("readOnly") is True, "the configuration must be mounted read-only"
    volume = volumes[mount["name"]]
    assert "configMap" in volume, f"{path} does not come from a ConfigMap"
    cm_name = volume["configMap"]["name"]
    assert cm_name in configmaps, f"ConfigMap {cm_name!r} is not among the manifests"
    items = volume["configMap"].get("items")
    key = rel
    if items is not None:
        keys = [i["key"] for i in items if i["path"] == rel]
        assert len(keys) == 1, f"no item of ConfigMap {cm_name} lands at {rel}"
        key = keys[0]
    data = configmaps[cm_name].get("data", {})
    assert key in data, f"ConfigMap {cm_name} has no key {key!r}"
    return str(data[key])


def pod_labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def probe_target(probe: dict[str, Any]) -> tuple[str, Any]:
    http = probe["httpGet"]
    return http["path"], http["port"]


def deploy_tomls() -> dict[str, str]:
    """Every edgeproxy configuration in deploy/: *.toml files and *.toml keys of ConfigMaps."""
    out = {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in DEPLOY.rglob("*.toml")}
    for f in sorted(DEPLOY.rglob("*.y*ml")):
        for d in yaml_docs(f):
            if d.get("kind") != "ConfigMap":
                continue
            for key, value in (d.get("data") or {}).items():
                if key.endswith(".toml"):
                    out[f"{f.relative_to(ROOT)}#{d['metadata']['name']}/{key}"] = value
    return out


_SECRET_SHAPES = [
    re.compile(r"\bsk-[A-Za-z0-9_-]{8,}"),  # OpenAI / Anthropic style
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key id
    re.compile(r"\bAIza[0-9A-Za-z_-]{30,}"),  # Google API key
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"),  # GitHub token
    re.compile(r"\bxox[abpr]-[A-Za-z0-9-]{10,}"),  # Slack token
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
]
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD", re.IGNORECASE)


def secret_shapes(text: str) -> list[str]:
    return [m.group(0) for rx in _SECRET_SHAPES for m in rx.finditer(text)]


def literal_secret_env(env: Any) -> list[str]:
    """Compose `environment` entries that give a secret-looking name a literal value."""
    pairs: list[tuple[str, Any]] = []
    if isinstance(env, list):
        for item in env:
            name, sep, value = str(item).partition("=")
            pairs.append((name, value if sep else None))
    elif isinstance(env, dict):
        pairs = list(env.items())
    bad = []
    for name, value in pairs:
        if not _SECRET_NAME.search(name) or value in (None, ""):
            continue
        if not re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*(:?[-?][^}]*)?\}", str(value)):
            bad.append(name)
    return bad


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with comments dropped and continuation lines joined."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1].rstrip() + " "
            continue
        buf += line
        word, _, rest = buf.strip().partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, "the Dockerfile ends inside a continued line"
    return out


def systemd_unit(text: str) -> dict[str, dict[str, list[str]]]:
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line}"
        assert "=" in line, f"not KEY=VALUE: {line}"
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def edge() -> dict[tuple[str, str], dict[str, Any]]:
    return k8s_objects("edge")


@pytest.fixture(scope="module")
def sidecar() -> dict[tuple[str, str], dict[str, Any]]:
    return k8s_objects("sidecar")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    (doc,) = yaml_docs(DEPLOY / "docker-compose.yml")
    return doc


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    return dockerfile_instructions((DEPLOY / "Dockerfile").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return systemd_unit((DEPLOY / "edgeproxy.service").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose_config() -> Config:
    return loads((DEPLOY / "edgeproxy.toml").read_text(encoding="utf-8"))


# ---------------------------------------------------------------- configurations


def test_every_deploy_config_is_accepted_by_the_real_parser() -> None:
    tomls = deploy_tomls()
    # deploy/edgeproxy.toml, the edge ConfigMap and the sidecar ConfigMap at least.
    assert len(tomls) >= 3, sorted(tomls)
    for where, text in tomls.items():
        cfg = loads(text)  # raises ConfigError naming the key path
        assert cfg.providers, f"{where}: no provider"
        for name, prov in cfg.providers.items():
            assert prov.api_key_env, f"{where}: provider {name} names no api_key_env"
        assert not secret_shapes(text), f"{where}: looks like it holds a key"
        if cfg.server.workers > 1:
            assert not cfg.storage.state.startswith("memory"), f"{where}: workers need Redis"


def test_edge_configmap_is_deploy_edgeproxy_toml(edge: dict[tuple[str, str], Any]) -> None:
    cm = one(edge, "ConfigMap")
    assert cm["data"]["edgeproxy.toml"] == (DEPLOY / "edgeproxy.toml").read_text(encoding="utf-8")


def test_edge_config_is_a_shared_state_edge_node(compose_config: Config) -> None:
    cfg = compose_config
    assert cfg.server.listen == f"0.0.0.0:{PORT}"
    assert cfg.server.auth == "keys"
    assert urlsplit(cfg.storage.ledger).scheme in ("postgresql", "postgres")
    assert urlsplit(cfg.storage.state).scheme == "redis"


# ---------------------------------------------------------------- Kubernetes: edge


def test_k8s_manifests_are_namespace_less_and_use_stable_apis() -> None:
    api = {
        "ConfigMap": "v1",
        "Service": "v1",
        "Deployment": "apps/v1",
        "HorizontalPodAutoscaler": "autoscaling/v2",
        "PodDisruptionBudget": "policy/v1",
    }
    files = sorted((DEPLOY / "k8s").rglob("*.y*ml"))
    assert len(files) >= 7
    for f in files:
        for d in yaml_docs(f):
            assert d["kind"] in api, f"{f.name}: unexpected kind {d['kind']}"
            assert d["apiVersion"] == api[d["kind"]], f"{f.name}: {d['kind']} {d['apiVersion']}"
            assert d["metadata"]["name"]
            assert "namespace" not in d["metadata"], f"{f.name}: pins a namespace"


def test_edge_has_every_object(edge: dict[tuple[str, str], Any]) -> None:
    kinds = sorted(k for k, _ in edge)
    assert kinds == sorted(
        ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
    )


def test_edge_deployment(edge: dict[tuple[str, str], Any]) -> None:
    dep = one(edge, "Deployment")
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    assert spec["replicas"] == 2
    assert pod_labels_match(spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"])
    assert pod["terminationGracePeriodSeconds"] == GRACE_S
    c = edgeproxy_container(pod)
    assert c["image"] == IMAGE
    assert c["ports"] == [{"name": "http", "containerPort": PORT, "protocol": "TCP"}]
    assert probe_target(c["readinessProbe"]) == ("/readyz", "http")
    assert probe_target(c["livenessProbe"]) == ("/healthz", "http")
    assert {"secretRef": {"name": SECRET_NAME}} in c["envFrom"]
    assert not any("value" in e for e in c.get("env", [])), "literal env values on the gateway"
    res = c["resources"]
    assert res["limits"]["memory"] == "256Mi"
    assert str(res["limits"]["cpu"]) in ("1", "1000m")
    assert res["requests"]["cpu"] and res["requests"]["memory"]  # the HPA needs the CPU request
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    # ... but the ledger journal (./edgeproxy-journal, a PostgreSQL ledger's default) needs the
    # working directory writable and kept across a container restart.
    volumes = {v["name"]: v for v in pod["volumes"]}
    (state,) = [m for m in c["volumeMounts"] if m["mountPath"] == "/var/lib/edgeproxy"]
    assert not state.get("readOnly", False) and "emptyDir" in volumes[state["name"]]
    assert sc["allowPrivilegeEscalation"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True or sc["runAsNonRoot"] is True
    assert pod["securityContext"].get("runAsUser", 10001) != 0


def test_edge_config_path_agrees_everywhere(
    edge: dict[tuple[str, str], Any], compose_config: Config
) -> None:
    pod = one(edge, "Deployment")["spec"]["template"]["spec"]
    text = mounted_config(pod, edgeproxy_container(pod), of_kind(edge, "ConfigMap"))
    cfg = loads(text)
    assert cfg.server.port == PORT
    assert not loopback(cfg.server.host), "an edge node must listen beyond loopback"
    assert cfg == compose_config


def test_service_targets_the_named_port(edge: dict[tuple[str, str], Any]) -> None:
    svc = one(edge, "Service")["spec"]
    pod_tpl = one(edge, "Deployment")["spec"]["template"]
    assert svc.get("type", "ClusterIP") == "ClusterIP"
    assert pod_labels_match(svc["selector"], pod_tpl["metadata"]["labels"])
    (port,) = svc["ports"]
    assert port["port"] == 80
    assert port["targetPort"] == "http"
    names = {p["name"]: p["containerPort"] for p in edgeproxy_container(pod_tpl["spec"])["ports"]}
    assert names.get(port["targetPort"]) == PORT


def test_hpa_scales_the_deployment(edge: dict[tuple[str, str], Any]) -> None:
    hpa = one(edge, "HorizontalPodAutoscaler")["spec"]
    dep = one(edge, "Deployment")
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": dep["metadata"]["name"],
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)
    assert hpa["minReplicas"] <= dep["spec"]["replicas"] <= hpa["maxReplicas"]
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Resource"
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}


def test_pdb_selects_the_gateway_pods(edge: dict[tuple[str, str], Any]) -> None:
    pdb = one(edge, "PodDisruptionBudget")["spec"]
    dep = one(edge, "Deployment")
    assert pdb["minAvailable"] == 1
    assert pdb["minAvailable"] < dep["spec"]["replicas"], "the PDB would block every drain"
    assert pod_labels_match(
        pdb["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"]
    )


# ---------------------------------------------------------------- Kubernetes: sidecar


def test_sidecar_pod(sidecar: dict[tuple[str, str], Any]) -> None:
    dep = one(sidecar, "Deployment")
    pod = dep["spec"]["template"]["spec"]
    assert pod_labels_match(
        dep["spec"]["selector"]["matchLabels"], dep["spec"]["template"]["metadata"]["labels"]
    )
    proxy = edgeproxy_container(pod)
    assert proxy["image"] == IMAGE
    assert {"secretRef": {"name": SECRET_NAME}} in proxy["envFrom"]
    assert proxy["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["terminationGracePeriodSeconds"] == GRACE_S

    cfg = loads(mounted_config(pod, proxy, of_kind(sidecar, "ConfigMap")))
    assert cfg.server.auth == "none"
    assert loopback(cfg.server.host)
    assert cfg.storage.state == "memory://"
    assert cfg.server.workers == 1

    # The SQLite ledger lives on a writable emptyDir of the edgeproxy container.
    assert cfg.storage.ledger.startswith("sqlite:////"), "the ledger path must be absolute"
    ledger = PurePosixPath(posixpath.normpath(cfg.storage.ledger.removeprefix("sqlite:///")))
    volumes = {v["name"]: v for v in pod["volumes"]}
    holders = [
        m
        for m in proxy["volumeMounts"]
        if ledger.is_relative_to(m["mountPath"]) and not m.get("readOnly", False)
    ]
    assert len(holders) == 1, f"{ledger} is not on one writable volume"
    assert "emptyDir" in volumes[holders[0]["name"]]

    # The kubelet cannot reach a loopback listener: probes must run inside the container.
    probes = [proxy[p] for p in ("startupProbe", "readinessProbe", "livenessProbe") if p in proxy]
    assert probes
    for probe in probes:
        assert "httpGet" not in probe and "tcpSocket" not in probe
        cmd = " ".join(probe["exec"]["command"])
        assert f"127.0.0.1:{cfg.server.port}/" in cmd
        assert "/healthz" in cmd or "/readyz" in cmd

    apps = [c for c in pod["containers"] if c is not proxy]
    assert apps, "no application container beside edgeproxy"
    for app in apps:
        env = {e["name"]: e.get("value") for e in app.get("env", [])}
        assert env.get("OPENAI_BASE_URL") == f"http://127.0.0.1:{cfg.server.port}/v1"


def test_no_secret_objects_or_key_material_in_deploy() -> None:
    for f in sorted(DEPLOY.rglob("*")):
        if not f.is_file():
            continue
        text = f.read_text(encoding="utf-8")
        assert not secret_shapes(text), f"{f.relative_to(ROOT)} holds something key-like"
        if f.suffix in (".yaml", ".yml"):
            for d in yaml_docs(f):
                assert d.get("kind") != "Secret", f"{f.name}: Secrets are created out of band"


def test_the_secret_detectors_can_fail() -> None:
    assert secret_shapes('api_key = "sk-proj-Abcdefgh12345678"')
    assert not secret_shapes('api_key_env = "DEEPINFRA_API_KEY"')
    assert literal_secret_env(["DEEPINFRA_API_KEY=abc"]) == ["DEEPINFRA_API_KEY"]
    assert literal_secret_env({"POSTGRES_PASSWORD": "hunter2"}) == ["POSTGRES_PASSWORD"]
    assert literal_secret_env(["DEEPINFRA_API_KEY", {"X": 1}]) == []
    assert literal_secret_env({"DEEPINFRA_API_KEY": "${DEEPINFRA_API_KEY:?set it}"}) == []


# ---------------------------------------------------------------- compose


def test_compose_services(compose: dict[str, Any], compose_config: Config) -> None:
    services = compose["services"]
    assert set(services) == {"gateway-1", "gateway-2", "redis", "postgres"}
    assert str(services["redis"]["image"]).startswith("redis:7")
    assert str(services["postgres"]["image"]).startswith("postgres:15")
    for name, svc in services.items():
        test = svc["healthcheck"]["test"]
        assert test and test[0] in ("CMD", "CMD-SHELL"), f"{name}: no healthcheck"
        assert "ports" not in svc or name.startswith("gateway"), f"{name} is published"
    # The configuration reaches the stores by their compose service names.
    assert urlsplit(compose_config.storage.ledger).hostname == "postgres"
    assert urlsplit(compose_config.storage.state).hostname == "redis"


@pytest.mark.parametrize(("name", "host_port"), [("gateway-1", 8081), ("gateway-2", 8082)])
def test_compose_gateway(
    compose: dict[str, Any], compose_config: Config, name: str, host_port: int
) -> None:
    svc = compose["services"][name]
    build = svc["build"]
    assert (DEPLOY / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()
    assert svc["image"] == IMAGE
    assert svc["ports"] == [f"{host_port}:{PORT}"]
    (mount,) = [v for v in svc["volumes"] if CONFIG_PATH in v]
    src, dst, mode = mount.split(":")
    assert (dst, mode) == (CONFIG_PATH, "ro")
    assert (DEPLOY / src).resolve() == (DEPLOY / "edgeproxy.toml").resolve()
    # A read-only container, but its working directory (the ledger journal) on a named volume.
    assert svc["read_only"] is True
    assert "journal:/var/lib/edgeproxy" in svc["volumes"] and "journal" in compose["volumes"]
    assert svc["depends_on"] == {
        "redis": {"condition": "service_healthy"},
        "postgres": {"condition": "service_healthy"},
    }
    check = " ".join(svc["healthcheck"]["test"])
    assert f"127.0.0.1:{PORT}/healthz" in check
    assert "curl" not in check and "wget" not in check  # not in python:3.11-slim
    # Provider keys pass through from the host, by name only.
    env = svc["environment"]
    assert isinstance(env, list)
    # The file's own providers (the built-in catalog's are used only when their key is set).
    own = tomllib.loads((DEPLOY / "edgeproxy.toml").read_text())["providers"]
    for prov_name in own:
        key_env = compose_config.providers[prov_name].api_key_env
        assert key_env in env, f"{name} does not receive {key_env}"
    assert str(svc["stop_grace_period"]) == f"{GRACE_S}s"


def test_compose_holds_no_literal_secret(compose: dict[str, Any]) -> None:
    for name, svc in compose["services"].items():
        assert literal_secret_env(svc.get("environment")) == [], f"{name} has a literal secret"
    pg = compose["services"]["postgres"]["environment"]
    assert "POSTGRES_PASSWORD" not in pg or str(pg["POSTGRES_PASSWORD"]).startswith("${")


# ---------------------------------------------------------------- Dockerfile


def test_dockerfile(dockerfile: list[tuple[str, str]]) -> None:
    froms = [i for i, (op, _) in enumerate(dockerfile) if op == "FROM"]
    assert len(froms) == 2, "expected a builder and a runtime stage"
    builder = dockerfile[froms[0] : froms[1]]
    runtime = dockerfile[froms[1] :]
    assert re.fullmatch(r"python:3\.11-slim\S* AS builder", builder[0][1], re.IGNORECASE)
    assert re.fullmatch(r"python:3\.11-slim\S*( AS \w+)?", runtime[0][1], re.IGNORECASE)

    builder_runs = " ".join(arg for op, arg in builder if op == "RUN")
    assert "build-essential" in builder_runs
    assert "pip wheel --no-deps" in builder_runs
    runtime_text = " ".join(arg for _, arg in runtime).lower()
    for tool in ("cython", "build-essential", "gcc"):
        assert tool not in runtime_text, f"{tool} leaks into the runtime stage"
    assert "--no-index" in runtime_text and "from=builder" in runtime_text

    def last(op: str) -> str:
        args = [arg for o, arg in runtime if o == op]
        assert args, f"no {op} in the runtime stage"
        return args[-1]

    user = last("USER").split(":")[0]
    assert user not in ("root", "0")
    assert user == "10001"  # numeric, so that Kubernetes can verify runAsNonRoot
    assert PORT in {int(p.split("/")[0]) for p in last("EXPOSE").split()}
    health = last("HEALTHCHECK")
    assert f"http://127.0.0.1:{PORT}/healthz" in health
    assert "urllib" in health and "curl" not in health
    assert json.loads(last("ENTRYPOINT")) == ["edgeproxy"]
    assert json.loads(last("CMD")) == ["serve", "--config", CONFIG_PATH]
    env = " ".join(arg for op, arg in runtime if op == "ENV")
    assert re.search(r"\bEDGEPROXY_REQUIRE_EXTENSIONS=1\b", env)

    # Whatever is copied from the build context exists (context = repository root).
    for op, arg in dockerfile:
        if op != "COPY" or "--from" in arg:
            continue
        *sources, _dest = [a for a in arg.split() if not a.startswith("--")]
        for src in sources:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"


def test_dockerfile_installs_the_ledger_driver(dockerfile: list[tuple[str, str]]) -> None:
    # billing/store.py imports asyncpg only for a postgresql:// ledger; the package does not
    # depend on it, so an image that serves such a configuration must add it.
    uses_pg = any(
        urlsplit(loads(text).storage.ledger).scheme in ("postgresql", "postgres")
        for text in deploy_tomls().values()
    )
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    declared = any(d.startswith("asyncpg") for d in pyproject["project"]["dependencies"])
    if not uses_pg or declared:
        return
    froms = [i for i, (op, _) in enumerate(dockerfile) if op == "FROM"]
    (default,) = [a for op, a in dockerfile[: froms[0]] if op == "ARG" and a.startswith("DRIVERS=")]
    assert "asyncpg" in default
    for start, end in ((froms[0], froms[1]), (froms[1], len(dockerfile))):
        stage = dockerfile[start:end]
        assert ("ARG", "DRIVERS") in stage
        assert any(op == "RUN" and "${DRIVERS}" in arg for op, arg in stage)


def test_dockerfile_parser_sees_continuations() -> None:
    ops = dockerfile_instructions("# c\nFROM a AS b\nRUN x \\\n  # inner\n  && y\nUSER 1\n")
    assert ops == [("FROM", "a AS b"), ("RUN", "x && y"), ("USER", "1")]


# ---------------------------------------------------------------- systemd


def test_systemd_unit(unit: dict[str, dict[str, list[str]]]) -> None:
    svc = unit["Service"]

    def get(key: str) -> str:
        assert key in svc, f"[Service] has no {key}"
        return svc[key][-1]

    assert get("Type") == "exec"
    assert get("User") == "edgeproxy"
    assert get("ExecStart") == f"/usr/local/bin/edgeproxy serve --config {CONFIG_PATH}"
    assert get("EnvironmentFile") == "-/etc/edgeproxy/env"
    assert get("Restart") == "on-failure"
    assert get("KillSignal") == "SIGTERM"
    assert get("TimeoutStopSec") == str(GRACE_S)
    assert get("StateDirectory") == "edgeproxy"
    assert get("LimitNOFILE") == "65536"
    assert get("ProtectSystem") == "strict"
    for flag in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert get(flag) in ("yes", "true", "on", "1"), flag
    assert get("WorkingDirectory") == "/var/lib/edgeproxy"  # where StateDirectory puts it
    assert "EDGEPROXY_REQUIRE_EXTENSIONS=1" in " ".join(svc.get("Environment", []))
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


# ---------------------------------------------------------------- README


def test_readme_names_existing_files() -> None:
    text = (DEPLOY / "README.md").read_text(encoding="utf-8")
    assert "docker compose -f deploy/docker-compose.yml up" in text
    assert "docker build -f deploy/Dockerfile" in text
    # Paths such as deploy/k8s/edge/ or deploy/edgeproxy.toml (not `kubectl exec deploy/NAME`).
    refs = set(
        re.findall(r"deploy/(?:k8s/[\w./-]*|Dockerfile|[\w.-]+\.(?:toml|ya?ml|service|md))", text)
    )
    assert len(refs) >= 5, refs
    for ref in refs:
        assert (ROOT / ref.rstrip(".")).exists(), f"README names {ref}, which does not exist"
