"""The manifest's probes, sent the way the kubelet sends them, to the project's local TF Serving
stand-in: readiness and startup fail until the model is loaded and pass after; liveness (a TCP
connection to the gRPC port) passes while the server runs and fails once it has stopped.

Path, port and timeout come from faster_rcnn_resnet_k8s.yaml itself, so a probe edited to a
wrong path or port fails here. The one translation is the address: in a pod the kubelet probes
POD_IP:containerPort (8501); here the server listens on a free loopback port instead, the way
`kubectl port-forward` maps a pod port to a local one (a fixed 8501 could be taken on a shared
machine).
"""

import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import yaml

from sidecar_testing.data import MANIFEST, PIXEL_MODEL
from sidecar_testing.servers import HOST, LocalServer


def serving_container() -> dict:
    deployment = next(
        d for d in yaml.safe_load_all(MANIFEST.read_text()) if d["kind"] == "Deployment"
    )
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def forwarded(container: dict, server: LocalServer) -> dict[int, int]:
    """The container's REST and gRPC ports (8501 named http, 8500 named grpc) mapped to where
    the local server listens."""
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    return {ports["http"]: server.port, ports["grpc"]: server.grpc_port}


def container_port(port: int | str, container: dict) -> int:
    """A probe's port: a number, or the name of one of the container's ports."""
    if isinstance(port, str):
        return next(p["containerPort"] for p in container["ports"] if p.get("name") == port)
    return port


def kubelet_http_probe(probe: dict, container: dict, local_ports: dict[int, int]) -> bool:
    """One httpGet probe attempt as the kubelet makes it: a named port resolved through the
    container's ports, success for a status 200-399 within timeoutSeconds, failure for anything
    else, a refused connection included."""
    http_get = probe["httpGet"]
    port = container_port(http_get["port"], container)
    url = f"http://{HOST}:{local_ports[port]}{http_get['path']}"
    try:
        response = requests.get(
            url, timeout=probe.get("timeoutSeconds", 1), headers={"User-Agent": "kube-probe/1.37"}
        )
    except requests.ConnectionError:
        return False
    return 200 <= response.status_code < 400


@pytest.mark.parametrize("probe_name", ["readinessProbe", "startupProbe"])
def test_probe_fails_until_the_model_is_loaded_then_passes(probe_name: str) -> None:
    container = serving_container()
    probe = container[probe_name]
    model_name = next(e["value"] for e in container["env"] if e["name"] == "MODEL_NAME")
    # On free loopback ports, with the arguments the manifest appends to the image's command.
    server = LocalServer(PIXEL_MODEL, model_name=model_name, extra_args=container["args"])
    local_ports = forwarded(container, server)

    with ThreadPoolExecutor(max_workers=1) as pool:
        started = pool.submit(server.start)  # returns once the port accepts connections
        try:
            before = []
            while not started.done():
                before.append(kubelet_http_probe(probe, container, local_ports))
                time.sleep(0.1)
            started.result()
            after = [kubelet_http_probe(probe, container, local_ports) for _ in range(3)]
        finally:
            server.stop()

    # The server loads the model for a second or more before it listens; probed all along.
    assert len(before) >= 3
    assert before[0] is False
    # Never ready and then not: once a probe passed, every later one passes too.
    first_pass = before.index(True) if True in before else len(before)
    assert all(before[first_pass:])
    assert after == [True, True, True]
    print(f"{probe_name}: {before.count(False)} failed attempts while loading, then passed")


def test_probe_on_a_model_the_server_does_not_have_fails(pixel_server: LocalServer) -> None:
    """The metadata path names the model: a server loaded with another model is not ready."""
    container = serving_container()
    assert pixel_server.model_name != "faster_rcnn_resnet"

    ready = kubelet_http_probe(
        container["readinessProbe"], container, forwarded(container, pixel_server)
    )

    assert ready is False


def kubelet_tcp_probe(probe: dict, container: dict, local_ports: dict[int, int]) -> bool:
    """One tcpSocket probe attempt: success when a connection opens within timeoutSeconds."""
    port = container_port(probe["tcpSocket"]["port"], container)
    try:
        socket.create_connection((HOST, local_ports[port]), probe.get("timeoutSeconds", 1)).close()
    except OSError:
        return False
    return True


def test_liveness_probe_reaches_the_grpc_port_while_the_server_runs() -> None:
    container = serving_container()
    probe = container["livenessProbe"]
    server = LocalServer(PIXEL_MODEL, model_name="m")
    local_ports = forwarded(container, server)
    with server:
        alive = [kubelet_tcp_probe(probe, container, local_ports) for _ in range(3)]
    assert alive == [True, True, True]
    assert kubelet_tcp_probe(probe, container, local_ports) is False  # stopped: nothing listens
