"""Schema validation of manifest objects with kubernetes-validate, strict, for several versions.

kubernetes-validate ships the OpenAPI schemas of each Kubernetes release. Strict mode rejects
unknown fields (a typo such as `readinessprobe` would otherwise be silently dropped by the API
server). Its own command line only warns when there is no schema for an apiVersion; here that
is an error, because it is exactly what a removed API (the seed's extensions/v1beta1
Deployment) looks like, and such a manifest does not apply to any current cluster.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from importlib import resources

import kubernetes_validate
from kubernetes_validate.utils import all_versions, major_minor

from deploy.checks import Document, Problem

# The newest releases kubernetes-validate 1.37 ships schemas for; GKE's channels offer these.
KUBERNETES_VERSIONS = ("1.34", "1.35", "1.36", "1.37")


def supported_versions() -> list[str]:
    """Every Kubernetes minor version the installed kubernetes-validate has schemas for."""
    return list(dict.fromkeys(major_minor(v) for v in all_versions()))  # all_versions is sorted


def schema_problems(doc: Document, versions: Sequence[str] = KUBERNETES_VERSIONS) -> list[Problem]:
    """The schema errors of `doc`, one Problem per distinct error, naming the versions it hits."""
    for field in ("apiVersion", "kind"):
        if not isinstance(doc.data.get(field), str):
            return [Problem(doc, field, "missing: not a Kubernetes object")]

    failing: dict[tuple[str, str], list[str]] = {}
    for version in versions:
        try:
            kubernetes_validate.validate(doc.data, version, strict=True)
            continue
        except kubernetes_validate.ValidationError as exc:
            key = (_field_path(exc.path), exc.message)
        except kubernetes_validate.SchemaNotFoundError:
            key = ("apiVersion", _no_schema_message(doc, version))
        failing.setdefault(key, []).append(version)
    return [
        Problem(doc, field, f"{message} (Kubernetes {', '.join(failed)})")
        for (field, message), failed in failing.items()
    ]


def _no_schema_message(doc: Document, version: str) -> str:
    served = _served_api_versions(doc.kind, version)
    hint = f"; {doc.kind} is served as {' or '.join(served)}" if served else ""
    return (
        f"no schema for {doc.kind} {doc.data['apiVersion']}: a removed or misspelt API version, "
        f"or a kind the API server does not know{hint}"
    )


def _served_api_versions(kind: str, version: str) -> list[str]:
    """The apiVersions Kubernetes `version` serves `kind` under, read from the shipped schemas."""
    folder = resources.files(kubernetes_validate) / "kubernetes-json-schema"
    folder = folder / f"v{version}.0-local-strict"
    served = []
    for schema in folder.iterdir():
        if not schema.name.startswith(f"{kind.lower()}-"):
            continue
        for gvk in json.loads(schema.read_text()).get("x-kubernetes-group-version-kind", []):
            if gvk["kind"] == kind:
                served.append(f"{gvk['group']}/{gvk['version']}".lstrip("/"))
    return sorted(served)


def _field_path(path: Sequence[str | int]) -> str:
    """jsonschema's deque(['spec', 'ports', 0, 'port']) as spec.ports[0].port."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text.lstrip(".") or "(the object)"
