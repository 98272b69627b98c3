"""`python -m deploy.validate` (make validate): the shipped manifest passes; broken copies of
it, made here one mistake at a time, fail with a message naming the object, field and problem."""

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner, Result

from deploy.checks import PLACEHOLDER_IMAGE, selects
from deploy.manifest import set_deployment_image
from deploy.schema import KUBERNETES_VERSIONS, supported_versions
from deploy.validate import main
from sidecar_testing.data import MANIFEST, ROOT

SHIPPED = MANIFEST.read_text()
DEPLOYMENT = "faster_rcnn_resnet_k8s.yaml:10 Deployment/faster-rcnn-resnet-deployment"
SERVICE = "Service/faster-rcnn-resnet-service"
CONTAINER = "spec.template.spec.containers[0]"
DIGEST_IMAGE = (
    "us-east1-docker.pkg.dev/tensorflow-serving-229609/models/faster_rcnn_resnet_serving"
    "@sha256:9f7eca6da7d833b240f7c54b630a9f85df8dbdfe46abe2b99651278dc4b13c53"
)


def validate(*args: str | Path) -> Result:
    return CliRunner().invoke(main, [str(a) for a in args])


Edit = Callable[[str], str]


def swap(old: str, new: str) -> Edit:
    """An edit replacing the one occurrence of `old` in the shipped manifest by `new`."""

    def edit(text: str) -> str:
        assert text.count(old) == 1, f"{old!r} must occur exactly once in the manifest"
        return text.replace(old, new)

    return edit


def cut(start: str, end: str) -> Edit:
    """An edit removing the lines from `start` up to (not including) `end`."""

    def edit(text: str) -> str:
        i = text.index(start)
        return text[:i] + text[text.index(end, i) :]

    return edit


def broken_copy(tmp_path: Path, edit: Edit) -> Path:
    text = edit(SHIPPED)
    assert text != SHIPPED
    path = tmp_path / MANIFEST.name
    path.write_text(text)
    return path


def errors(result: Result) -> list[str]:
    return [line for line in result.output.splitlines() if line.startswith("ERROR")]


def test_shipped_manifest_is_valid_for_several_kubernetes_versions() -> None:
    result = validate()

    assert result.exit_code == 0, result.output
    assert errors(result) == []
    versions = ", ".join(KUBERNETES_VERSIONS)
    assert (
        f"OK faster_rcnn_resnet_k8s.yaml: 4 objects valid for Kubernetes {versions}"
        in result.output
    )
    assert f"NOTE {DEPLOYMENT}: {CONTAINER}.image: the documented placeholder" in result.output


def test_make_validate_command_runs_as_a_module() -> None:
    """What `make validate` and CI run: the real module entry point, in a child process."""
    result = subprocess.run(
        [sys.executable, "-m", "deploy.validate", "faster_rcnn_resnet_k8s.yaml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK faster_rcnn_resnet_k8s.yaml" in result.stdout


def test_validates_against_the_newest_kubernetes_versions_installed() -> None:
    """At least three current versions; bump KUBERNETES_VERSIONS when kubernetes-validate grows."""
    assert len(KUBERNETES_VERSIONS) >= 3
    assert list(KUBERNETES_VERSIONS) == supported_versions()[-len(KUBERNETES_VERSIONS) :]


SELECTOR = "    matchLabels:\n      app.kubernetes.io/name: faster-rcnn-resnet\n  # A rollout"
READY_PATH = (
    "readinessProbe:\n            httpGet:\n              path: /v1/models/faster_rcnn_resnet"
)
LIMITS = '            limits:\n              cpu: "2"\n              memory: 4Gi\n'
SERVICE_SELECTOR = (
    "  type: LoadBalancer\n  selector:\n    app.kubernetes.io/name: faster-rcnn-resnet\n"
)

# name: (edit, the object and field the error names, words of the error); the list first.
BROKEN = {
    "removed API version": (
        swap("apps/v1\nkind: Deployment", "extensions/v1beta1\nkind: Deployment"),
        f"{DEPLOYMENT}: apiVersion",
        "no schema for Deployment extensions/v1beta1: a removed or misspelt API version, or a "
        "kind the API server does not know; Deployment is served as apps/v1",
    ),
    "mismatched selector": (
        swap(SELECTOR, SELECTOR.replace("app.kubernetes.io/name: faster-rcnn-resnet", "app: rcnn")),
        f"{DEPLOYMENT}: spec.selector",
        "{matchLabels: {app: rcnn}} does not match the pod labels",
    ),
    "string containerPort": (
        swap("containerPort: 8501", 'containerPort: "8501"'),
        f"{DEPLOYMENT}: {CONTAINER}.ports[1].containerPort",
        "'8501' is not of type 'integer' (Kubernetes 1.34, 1.35, 1.36, 1.37)",
    ),
    "unknown field": (
        swap("  minReadySeconds: 10\n", "  minReadySeconds: 10\n  replica: 3\n"),
        f"{DEPLOYMENT}: spec",
        "Additional properties are not allowed ('replica' was unexpected)",
    ),
    ":latest image": (
        swap(PLACEHOLDER_IMAGE, "region-docker.pkg.dev/project/repo/serving:latest"),
        f"{DEPLOYMENT}: {CONTAINER}.image",
        "uses the :latest tag",
    ),
    "missing readiness probe": (
        cut("          readinessProbe:\n", "          livenessProbe:\n"),
        f"{DEPLOYMENT}: {CONTAINER}.readinessProbe",
        "missing: the pod would get traffic before it can answer",
    ),
    "probe on a port name that does not exist": (
        swap("tcpSocket:\n              port: grpc", "tcpSocket:\n              port: grcp"),
        f"{DEPLOYMENT}: {CONTAINER}.livenessProbe.tcpSocket.port",
        "names port 'grcp', which the container does not declare (its named ports: grpc, http)",
    ),
    "image pinned by tag only": (
        swap(PLACEHOLDER_IMAGE, "region-docker.pkg.dev/project/repo/serving:v0.1.0"),
        f"{DEPLOYMENT}: {CONTAINER}.image",
        "is not pinned by digest (IMAGE@sha256:<64 hex>)",
    ),
    "probe path naming another model": (
        swap(READY_PATH, READY_PATH.replace("faster_rcnn_resnet", "ssd")),
        f"{DEPLOYMENT}: {CONTAINER}.readinessProbe.httpGet.path",
        "'/v1/models/ssd/metadata' does not name the served model 'faster_rcnn_resnet'",
    ),
    "readiness on the status endpoint": (
        swap(READY_PATH + "/metadata\n", READY_PATH + "\n"),
        f"{DEPLOYMENT}: {CONTAINER}.readinessProbe",
        "must be an httpGet of /v1/models/faster_rcnn_resnet/metadata",
    ),
    "no memory limit": (
        swap(LIMITS, LIMITS.replace("              memory: 4Gi\n", "")),
        f"{DEPLOYMENT}: {CONTAINER}.resources.limits",
        "no memory",
    ),
    "rollout may lower capacity": (
        swap("maxUnavailable: 0", "maxUnavailable: 1"),
        f"{DEPLOYMENT}: spec.strategy.rollingUpdate.maxUnavailable",
        "1 (the default is 25%): a rollout may remove a serving pod",
    ),
    "replicas fighting the autoscaler": (
        swap("  minReadySeconds: 10\n", "  minReadySeconds: 10\n  replicas: 2\n"),
        f"{DEPLOYMENT}: spec.replicas",
        "set while HorizontalPodAutoscaler faster-rcnn-resnet-hpa owns the replica count",
    ),
    "replicas not spread over nodes": (
        cut("      topologySpreadConstraints:\n", "      containers:\n"),
        f"{DEPLOYMENT}: spec.template.spec.topologySpreadConstraints",
        "nothing spreads the replicas over nodes",
    ),
    "no preStop pause": (
        cut("          lifecycle:\n", "          securityContext:\n            allowPrivilege"),
        f"{DEPLOYMENT}: {CONTAINER}.lifecycle.preStop",
        "missing: a stopping pod would still get requests",
    ),
    "grace period shorter than the pause": (
        swap("terminationGracePeriodSeconds: 60", "terminationGracePeriodSeconds: 20"),
        f"{DEPLOYMENT}: spec.template.spec.terminationGracePeriodSeconds",
        "20 s does not outlast the preStop sleep of 20 s",
    ),
    "Service selecting no pod": (
        swap(SERVICE_SELECTOR, SERVICE_SELECTOR.replace("faster-rcnn-resnet", "faster-rcnn")),
        f"{SERVICE}: spec.selector",
        "selects no pod of the Deployments here (faster-rcnn-resnet-deployment)",
    ),
    "Service targetPort that does not exist": (
        swap("targetPort: http", "targetPort: rest"),
        f"{SERVICE}: spec.ports[0].targetPort",
        "'rest' is not a port of Deployment faster-rcnn-resnet-deployment's containers",
    ),
    "PodDisruptionBudget blocking every eviction": (
        swap("minAvailable: 1", "minAvailable: 2"),
        "PodDisruptionBudget/faster-rcnn-resnet-pdb: spec.minAvailable",
        "2 with 2 replicas of faster-rcnn-resnet-deployment: no pod could ever be evicted",
    ),
    "PodDisruptionBudget allowing no disruption": (
        swap("  minAvailable: 1\n", "  maxUnavailable: 0\n"),
        "PodDisruptionBudget/faster-rcnn-resnet-pdb: spec.maxUnavailable",
        "0: no pod could ever be evicted",
    ),
}


@pytest.mark.parametrize(("edit", "where", "message"), BROKEN.values(), ids=BROKEN.keys())
def test_broken_copy_fails_naming_the_problem(
    tmp_path: Path, edit: Edit, where: str, message: str
) -> None:
    result = validate(broken_copy(tmp_path, edit))

    assert result.exit_code == 1, result.output
    assert any(where in line and message in line for line in errors(result)), result.output
    # ... and nothing else: one mistake is reported as one problem, not a cascade.
    assert all(where in line for line in errors(result)), result.output
    assert "problem" in result.output.splitlines()[-1]


def test_autoscaler_on_another_deployment_leaves_it_at_one_replica(tmp_path: Path) -> None:
    """A wrong scaleTargetRef is reported, and so is what follows from it: a single replica,
    which the PodDisruptionBudget would never let be evicted."""
    edit = swap("    name: faster-rcnn-resnet-deployment\n", "    name: faster-rcnn-deployment\n")

    result = validate(broken_copy(tmp_path, edit))

    assert result.exit_code == 1
    assert [line.split(": ", 2)[1] for line in errors(result)] == [
        "spec.replicas",
        "spec.minAvailable",
        "spec.scaleTargetRef",
    ]
    assert "points at apps/v1 Deployment faster-rcnn-deployment, which is not" in result.output
    assert "1 (fewer than 2): one failing or restarting pod leaves no server" in result.output


def test_placeholder_is_an_error_when_forbidden() -> None:
    result = validate("--forbid_placeholder", MANIFEST)

    assert result.exit_code == 1
    assert errors(result) == [
        f"ERROR {DEPLOYMENT}: {CONTAINER}.image: the documented placeholder: `build_image.py "
        "--push --manifest FILE` writes the pushed image's digest (use --forbid_placeholder "
        "before deploying)"
    ]


def test_manifest_written_by_set_deployment_image_validates(tmp_path: Path) -> None:
    """What `build_image.py --push --manifest` leaves behind is ready to deploy."""
    path = tmp_path / MANIFEST.name
    shutil.copy(MANIFEST, path)
    set_deployment_image(path, DIGEST_IMAGE)

    result = validate("--forbid_placeholder", path)

    assert result.exit_code == 0, result.output
    assert "NOTE" not in result.output


def test_files_applied_together_are_checked_together(tmp_path: Path) -> None:
    """Split into two files, the Service still finds the Deployment's pods and ports."""
    deployment, *others = SHIPPED.split("\n---\n")
    (tmp_path / "deployment.yaml").write_text(deployment)
    (tmp_path / "others.yaml").write_text("\n---\n".join(others))

    together = validate(tmp_path / "deployment.yaml", tmp_path / "others.yaml")
    alone = validate(tmp_path / "others.yaml")

    assert together.exit_code == 0, together.output
    assert "4 objects valid" in together.output
    assert alone.exit_code == 1
    assert "selects no pod of the Deployments here (none)" in alone.output


def test_not_yaml_fails_with_the_parser_message(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("kind: Service\nspec: [unclosed\n")

    result = validate(path)

    assert result.exit_code == 1
    assert "ERROR broken.yaml: not valid YAML" in result.output


def test_unsupported_kubernetes_version_is_a_usage_error() -> None:
    result = validate("-k", "1.12", MANIFEST)

    assert result.exit_code == 2
    assert "'1.12' is not one of" in result.output


@pytest.mark.parametrize(
    ("selector", "matched"),
    [
        ({"matchLabels": {"app": "a"}}, True),
        ({"matchLabels": {"app": "b"}}, False),
        ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["a", "b"]}]}, True),
        ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["a"]}]}, False),
        ({"matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}, True),
        ({"matchExpressions": [{"key": "tier", "operator": "Exists"}]}, False),
        ({}, True),
    ],
)
def test_label_selector_semantics(selector: dict, matched: bool) -> None:
    assert selects(selector, {"app": "a", "version": "1"}) is matched


def test_shipped_pod_runs_unprivileged() -> None:
    """Not a validator rule (clusters enforce it with Pod Security admission): a guard for ours."""
    deployment = next(yaml.safe_load_all(SHIPPED))
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]

    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 1000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert container["image"] == PLACEHOLDER_IMAGE
