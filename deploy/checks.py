"""The checks a JSON schema cannot express: do the objects of a manifest fit together, and does
the Deployment keep serving while a new model rolls out?

A schema validates one object at a time, so it happily accepts a Service whose selector matches
no pod, a probe on a port name the container does not declare, or a rollout that may take every
serving pod down at once. Each check here returns Problems naming the object, the field and
what to change; they are written defensively (`_map`, `_list`) because they also run on objects
that failed the schema, so one mistake is reported once, not as a crash.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# The image the shipped manifest carries until `build_image.py --push --manifest` writes the
# pushed digest: a syntactically valid reference following Artifact Registry's
# REGION-docker.pkg.dev/PROJECT/REPO/IMAGE pattern, pinned to an all-zero digest that no
# registry holds. Accepted with a note (so the shipped file validates); an error with
# --forbid_placeholder (for a pipeline about to deploy).
PLACEHOLDER_IMAGE = (
    "region-docker.pkg.dev/project/repo/faster_rcnn_resnet_serving@sha256:" + "0" * 64
)
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
HOSTNAME = "kubernetes.io/hostname"
PROBES = ("startupProbe", "readinessProbe", "livenessProbe")
BLOCKS_DRAINS = "no pod could ever be evicted, so node drains and cluster upgrades would hang"


@dataclass(frozen=True)
class Document:
    """One object of a manifest file, with where it starts (`file.yaml:12`) for messages."""

    source: str
    data: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.data.get("kind", ""))

    @property
    def name(self) -> str:
        return str(_map(self.data.get("metadata")).get("name", ""))

    @property
    def namespace(self) -> str:
        return str(_map(self.data.get("metadata")).get("namespace", ""))

    def __str__(self) -> str:
        return f"{self.source} {self.kind or '(no kind)'}/{self.name or '(no name)'}"


@dataclass(frozen=True)
class Problem:
    document: Document
    field: str
    message: str
    note: bool = False  # worth saying, but the manifest is still valid

    def __str__(self) -> str:
        return f"{'NOTE' if self.note else 'ERROR'} {self.document}: {self.field}: {self.message}"


def check_documents(documents: list[Document], allow_placeholder: bool = True) -> list[Problem]:
    """Every cross-object and rollout-safety problem among `documents` (one `kubectl apply`)."""
    deployments = [d for d in documents if d.kind == "Deployment"]
    hpas = [d for d in documents if d.kind == "HorizontalPodAutoscaler"]
    problems: list[Problem] = []
    for doc in documents:
        if doc.kind == "Deployment":
            problems += _deployment_problems(doc, hpas, allow_placeholder)
        elif doc.kind == "Service":
            problems += _service_problems(doc, deployments)
        elif doc.kind == "PodDisruptionBudget":
            problems += _pdb_problems(doc, deployments, hpas)
        elif doc.kind == "HorizontalPodAutoscaler":
            problems += _hpa_problems(doc, deployments)
    return problems


def selects(selector: Any, labels: dict[str, Any]) -> bool:
    """Kubernetes LabelSelector semantics: every matchLabels pair and every matchExpression."""
    selector = _map(selector)
    if not _map(selector.get("matchLabels")).items() <= labels.items():
        return False
    for expr in _objects(selector.get("matchExpressions")):
        key, values = expr.get("key"), _list(expr.get("values"))
        matched = {
            "In": key in labels and labels[key] in values,
            "NotIn": labels.get(key) not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }.get(expr.get("operator"), False)
        if not matched:
            return False
    return True


# --- Deployment ---------------------------------------------------------------------------


def _deployment_problems(
    doc: Document, hpas: list[Document], allow_placeholder: bool
) -> list[Problem]:
    spec = _map(doc.data.get("spec"))
    pod_labels = _pod_labels(doc)
    pod_spec = _pod_spec(doc)
    problems = []

    def problem(field: str, message: str, note: bool = False) -> None:
        problems.append(Problem(doc, field, message, note))

    if not spec.get("selector"):
        problem("spec.selector", "missing: apps/v1 needs a selector matching the pod labels")
    elif not selects(spec["selector"], pod_labels):
        problem(
            "spec.selector",
            f"{_brief(spec['selector'])} does not match the pod labels "
            f"spec.template.metadata.labels {_brief(pod_labels)}",
        )

    scalers = [h for h in hpas if _scales(h, doc)]
    if scalers and "replicas" in spec:
        problem(
            "spec.replicas",
            f"set while HorizontalPodAutoscaler {scalers[0].name} owns the replica count: every "
            "`kubectl apply` would reset it; remove spec.replicas",
        )
    elif not scalers and _int(spec.get("replicas", 1)) < 2:
        problem(
            "spec.replicas",
            f"{spec.get('replicas', 1)} (fewer than 2): one failing or restarting pod leaves no "
            "server; use 2 or more, or a HorizontalPodAutoscaler with minReplicas >= 2",
        )

    strategy = _map(spec.get("strategy"))
    max_unavailable = _map(strategy.get("rollingUpdate")).get("maxUnavailable", "25%")
    if strategy.get("type", "RollingUpdate") != "RollingUpdate":
        problem("spec.strategy.type", f"{strategy['type']} stops all pods before starting new ones")
    elif str(max_unavailable) not in ("0", "0%"):
        problem(
            "spec.strategy.rollingUpdate.maxUnavailable",
            f"{max_unavailable} (the default is 25%): a rollout may remove a serving pod before "
            "its replacement is Ready; set 0",
        )

    problems += _spread_problems(doc, pod_spec, pod_labels)

    containers = _containers(doc)
    for i, container in enumerate(containers):
        path = f"spec.template.spec.containers[{i}]"
        problems += _container_problems(doc, path, container, allow_placeholder)
        if _model_name(container):
            grace = pod_spec.get("terminationGracePeriodSeconds", 30)
            problems += _shutdown_problems(doc, path, container, grace)
    if not any(_model_name(c) for c in containers):
        problem(
            "spec.template.spec.containers",
            "no container sets env MODEL_NAME: TF Serving would not know which model to serve, "
            "and the probes cannot be checked against it",
        )
    return problems


def _spread_problems(doc: Document, pod_spec: dict, pod_labels: dict) -> list[Problem]:
    """Replicas must be spread over nodes by topologySpreadConstraints or pod anti-affinity."""
    anti = _map(_map(pod_spec.get("affinity")).get("podAntiAffinity"))
    terms = (
        _objects(pod_spec.get("topologySpreadConstraints"))
        + _objects(anti.get("requiredDuringSchedulingIgnoredDuringExecution"))
        + [
            _map(t.get("podAffinityTerm"))
            for t in _objects(anti.get("preferredDuringSchedulingIgnoredDuringExecution"))
        ]
    )
    by_node = [t for t in terms if t.get("topologyKey") == HOSTNAME]
    field = "spec.template.spec.topologySpreadConstraints"
    if not by_node:
        return [
            Problem(
                doc,
                field,
                f"nothing spreads the replicas over nodes (a topologySpreadConstraint or pod "
                f"anti-affinity with topologyKey {HOSTNAME}): they may all share one node",
            )
        ]
    if not any(selects(t.get("labelSelector"), pod_labels) for t in by_node):
        return [Problem(doc, field, f"the {HOSTNAME} spreading selects other pods, not these")]
    return []


def _container_problems(
    doc: Document, path: str, container: dict, allow_placeholder: bool
) -> list[Problem]:
    """Image, resources and probes of the container at `path` in `doc`."""
    problems: list[Problem] = []

    def problem(field: str, message: str, note: bool = False) -> None:
        problems.append(Problem(doc, f"{path}.{field}", message, note))

    image = container.get("image")
    if not image:
        problem("image", "missing")
    for message, note in _image_problems(str(image or ""), allow_placeholder):
        problem("image", message, note)

    resources = _map(container.get("resources"))
    for kind in ("requests", "limits"):
        missing = [r for r in ("cpu", "memory") if r not in _map(resources.get(kind))]
        if missing:
            problem(
                f"resources.{kind}",
                f"no {' or '.join(missing)}: the scheduler and the autoscaler need requests, "
                "and limits keep one pod from starving its node",
            )

    ports = [p["name"] for p in _objects(container.get("ports")) if "name" in p]
    model = _model_name(container)
    for probe_name in PROBES:
        probe = _map(container.get(probe_name))
        for handler in ("httpGet", "tcpSocket", "grpc"):
            port = _map(probe.get(handler)).get("port")
            if isinstance(port, str) and port not in ports:
                problem(
                    f"{probe_name}.{handler}.port",
                    f"names port {port!r}, which the container does not declare "
                    f"(its named ports: {', '.join(map(str, ports)) or 'none'})",
                )
        http_path = _map(probe.get("httpGet")).get("path", "")
        if model and "httpGet" in probe and not _names_model(http_path, model):
            problem(
                f"{probe_name}.httpGet.path",
                f"{http_path!r} does not name the served model {model!r} (env MODEL_NAME): "
                f"expected /v1/models/{model}/...",
            )

    readiness = _map(container.get("readinessProbe"))
    if not readiness:
        problem("readinessProbe", "missing: the pod would get traffic before it can answer")
    elif model and not str(_map(readiness.get("httpGet")).get("path", "")).endswith("/metadata"):
        problem(
            "readinessProbe",
            f"must be an httpGet of /v1/models/{model}/metadata: that answers 404 until a "
            "model version is loaded (the status endpoint answers 200 while loading)",
        )
    return problems


def _image_problems(image: str, allow_placeholder: bool) -> list[tuple[str, bool]]:
    """(message, is_note) pairs: the image must be pinned by digest and not use :latest."""
    if not image:
        return []
    if image == PLACEHOLDER_IMAGE:
        return [
            (
                "the documented placeholder: `build_image.py --push --manifest FILE` writes the "
                "pushed image's digest (use --forbid_placeholder before deploying)",
                allow_placeholder,
            )
        ]
    problems = []
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if last.endswith(":latest"):
        problems.append(("uses the :latest tag: what a pod runs depends on when it pulled", False))
    if not DIGEST.search(image):
        problems.append(
            (
                f"{image!r} is not pinned by digest (IMAGE@sha256:<64 hex>): a tag can move, so "
                "replicas could serve different models; build_image.py --manifest writes it",
                False,
            )
        )
    return problems


def _shutdown_problems(doc: Document, path: str, container: dict, grace: Any) -> list[Problem]:
    """The serving container must pause before stopping, and the grace period outlast the pause."""
    pre_stop = _map(_map(container.get("lifecycle")).get("preStop"))
    if not pre_stop:
        return [
            Problem(
                doc,
                f"{path}.lifecycle.preStop",
                "missing: a stopping pod would still get requests until the load balancer "
                "notices; sleep ~20 s first",
            )
        ]
    command = _list(_map(pre_stop.get("exec")).get("command"))
    pause = _map(pre_stop.get("sleep")).get("seconds") or (
        command[-1] if command and "sleep" in str(command[0]) else None
    )
    if pause is not None and _int(pause) >= _int(grace):
        return [
            Problem(
                doc,
                "spec.template.spec.terminationGracePeriodSeconds",
                f"{grace} s does not outlast the preStop sleep of {pause} s: requests in "
                "flight would be cut",
            )
        ]
    return []


# --- Service, PodDisruptionBudget, HorizontalPodAutoscaler ---------------------------------


def _service_problems(doc: Document, deployments: list[Document]) -> list[Problem]:
    spec = _map(doc.data.get("spec"))
    selector = _map(spec.get("selector"))
    if not selector:
        return []  # no selector: endpoints are managed by hand, nothing to match
    targets = _selected(doc, {"matchLabels": selector}, deployments)
    if not targets:
        return [_selects_no_pod(doc, selector, deployments, "the Service would have no endpoints")]
    problems = []
    for i, port in enumerate(_objects(spec.get("ports"))):
        target = port.get("targetPort", port.get("port"))
        for deployment in targets:
            declared = _container_ports(deployment)
            if target not in declared:
                problems.append(
                    Problem(
                        doc,
                        f"spec.ports[{i}].targetPort",
                        f"{target!r} is not a port of Deployment {deployment.name}'s containers "
                        f"({', '.join(map(str, declared))})",
                    )
                )
    return problems


def _pdb_problems(
    doc: Document, deployments: list[Document], hpas: list[Document]
) -> list[Problem]:
    spec = _map(doc.data.get("spec"))
    # policy/v1: an empty selector selects every pod of the namespace, a missing one none.
    targets = _selected(doc, spec["selector"], deployments) if "selector" in spec else []
    if not targets:
        return [
            _selects_no_pod(doc, spec.get("selector"), deployments, "the budget protects nothing")
        ]
    if str(spec.get("maxUnavailable")) in ("0", "0%"):
        return [Problem(doc, "spec.maxUnavailable", f"{spec['maxUnavailable']}: {BLOCKS_DRAINS}")]
    min_available = spec.get("minAvailable")
    problems = []
    for deployment in targets:
        replicas = _min_replicas(deployment, hpas)
        if isinstance(min_available, int) and min_available >= replicas:
            message = f"{min_available} with {replicas} replicas of {deployment.name}"
            problems.append(Problem(doc, "spec.minAvailable", f"{message}: {BLOCKS_DRAINS}"))
    return problems


def _hpa_problems(doc: Document, deployments: list[Document]) -> list[Problem]:
    spec = _map(doc.data.get("spec"))
    problems = []
    if not any(_scales(doc, d) for d in deployments):
        ref = _map(spec.get("scaleTargetRef"))
        problems.append(
            Problem(
                doc,
                "spec.scaleTargetRef",
                f"points at {ref.get('apiVersion')} {ref.get('kind')} {ref.get('name')}, which is "
                f"not among the Deployments here ({_names(deployments)})",
            )
        )
    if _int(spec.get("minReplicas", 1)) < 2:
        problems.append(
            Problem(doc, "spec.minReplicas", "below 2: scaling down would leave a single pod")
        )
    return problems


# --- helpers --------------------------------------------------------------------------------


def _scales(hpa: Document, deployment: Document) -> bool:
    ref = _map(_map(hpa.data.get("spec")).get("scaleTargetRef"))
    return (
        ref.get("apiVersion") == "apps/v1"
        and ref.get("kind") == "Deployment"
        and ref.get("name") == deployment.name
        and hpa.namespace == deployment.namespace
    )


def _min_replicas(deployment: Document, hpas: list[Document]) -> int:
    """The fewest pods the Deployment runs: its HPA's minReplicas, or spec.replicas."""
    for hpa in hpas:
        if _scales(hpa, deployment):
            return _int(_map(hpa.data.get("spec")).get("minReplicas", 1))
    return _int(_map(deployment.data.get("spec")).get("replicas", 1))


def _pod_template(deployment: Document) -> dict[str, Any]:
    return _map(_map(deployment.data.get("spec")).get("template"))


def _pod_labels(deployment: Document) -> dict[str, Any]:
    return _map(_map(_pod_template(deployment).get("metadata")).get("labels"))


def _pod_spec(deployment: Document) -> dict[str, Any]:
    return _map(_pod_template(deployment).get("spec"))


def _containers(deployment: Document) -> list[dict]:
    return _objects(_pod_spec(deployment).get("containers"))


def _container_ports(deployment: Document) -> list[Any]:
    """Every name and number a Service targetPort may use for the Deployment's pods."""
    ports = [p for c in _containers(deployment) for p in _objects(c.get("ports"))]
    return [p["name"] for p in ports if "name" in p] + [p.get("containerPort") for p in ports]


def _model_name(container: dict) -> str | None:
    env = {e.get("name"): e.get("value") for e in _objects(container.get("env"))}
    return env.get("MODEL_NAME")


def _names_model(path: Any, model: str) -> bool:
    """/v1/models/NAME, /v1/models/NAME/metadata, /v1/models/NAME/versions/3 ... all name NAME."""
    return re.fullmatch(rf"/v1/models/{re.escape(model)}([/:].*)?", str(path)) is not None


def _selected(doc: Document, selector: Any, deployments: list[Document]) -> list[Document]:
    """The Deployments in `doc`'s namespace whose pods `selector` selects."""
    return [
        d for d in deployments if d.namespace == doc.namespace and selects(selector, _pod_labels(d))
    ]


def _selects_no_pod(
    doc: Document, selector: Any, deployments: list[Document], consequence: str
) -> Problem:
    """The problem of a Service or budget whose selector misses every Deployment's pods."""
    return Problem(
        doc,
        "spec.selector",
        f"{_brief(selector)} selects no pod of the Deployments here ({_names(deployments)}): "
        f"{consequence}",
    )


def _names(documents: list[Document]) -> str:
    return ", ".join(d.name for d in documents) or "none"


def _brief(value: Any) -> str:
    return str(value).replace("'", "")


def _map(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def _objects(value: Any) -> list[dict]:
    """The mappings in a list field (containers, ports, ...), whatever else a broken file has."""
    return [v for v in _list(value) if isinstance(v, dict)]


def _int(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
