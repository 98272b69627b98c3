"""Targeted edits of a Kubernetes manifest: change one value, keep every other byte.

Why not `yaml.safe_load` + `yaml.dump`: that round trip drops the comments, key order and
quoting that explain the manifest to its reader, and turns a one-line change into a noisy diff.
Instead PyYAML's composer finds the Deployment's container image (a real YAML parser, not a
regular expression over the text) and tells where that scalar sits in the text; only those
characters are replaced, and the result is parsed again to prove the edit says what was meant.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from deploy.errors import DeployError


class ManifestError(DeployError, ValueError):
    """The manifest cannot be edited as asked; the message says why and what to change."""


def set_deployment_image(path: Path, image_ref: str, container: str | None = None) -> str:
    """Set the image of the Deployment's serving container in `path` to `image_ref`.

    `path` may hold several YAML documents (Deployment, Service, ...); exactly one must be a
    Deployment. Its container is the only one, or the one named `container`. Returns the image
    the manifest had before. Raises ManifestError (and leaves the file untouched) when the
    Deployment or container cannot be identified without guessing.
    """
    path = Path(path)
    if not image_ref or any(ch.isspace() for ch in image_ref):
        raise ManifestError(f"not an image reference: {image_ref!r}")
    # Bytes, not read_text(): universal-newline decoding would turn CRLF files into LF ones.
    text = path.read_bytes().decode("utf-8")
    node = _image_node(text, path, container)
    start, end = node.start_mark.index, node.end_mark.index
    new_text = text[:start] + _scalar(image_ref, node.style) + text[end:]

    try:
        written = _image_node(new_text, path, container).value
    except ManifestError:
        written = None  # the new value broke the YAML structure
    if written != image_ref:
        raise ManifestError(
            f"{path}: {image_ref!r} would be read back as {written!r}; file left unchanged"
        )
    path.write_bytes(new_text.encode("utf-8"))
    return node.value


def _scalar(value: str, style: str | None) -> str:
    """`value` written in the quoting style the old value used, so the diff is the value only."""
    if style == "'":
        return "'" + value.replace("'", "''") + "'"
    if style == '"':
        return json.dumps(value)  # a JSON string is a valid YAML double-quoted scalar
    return value


def _image_node(text: str, path: Path, container: str | None) -> yaml.ScalarNode:
    try:
        documents = [doc for doc in yaml.compose_all(text, Loader=yaml.SafeLoader) if doc]
    except yaml.YAMLError as exc:
        raise ManifestError(f"{path} is not valid YAML: {exc}") from exc

    deployments = [doc for doc in documents if _scalar_at(doc, "kind") == "Deployment"]
    if not deployments:
        raise ManifestError(f"{path} has no Deployment: nothing to set the image of")
    if len(deployments) > 1:
        names = ", ".join(str(_scalar_at(d, "metadata", "name")) for d in deployments)
        raise ManifestError(
            f"{path} has {len(deployments)} Deployments ({names}): "
            "ambiguous, keep one Deployment per manifest file"
        )
    deployment = deployments[0]
    name = _scalar_at(deployment, "metadata", "name")

    containers = _node_at(deployment, "spec", "template", "spec", "containers")
    if not isinstance(containers, yaml.SequenceNode) or not containers.value:
        raise ManifestError(f"{path}: Deployment {name} has no spec.template.spec.containers")
    names = [str(_scalar_at(c, "name")) for c in containers.value]
    if container is not None:
        chosen = [c for c, n in zip(containers.value, names, strict=True) if n == container]
        if len(chosen) != 1:
            raise ManifestError(
                f"{path}: Deployment {name} has no single container named {container!r} "
                f"(containers: {', '.join(names)})"
            )
    elif len(containers.value) > 1:
        raise ManifestError(
            f"{path}: Deployment {name} has {len(names)} containers ({', '.join(names)}): "
            "ambiguous, name the serving container"
        )
    else:
        chosen = containers.value

    image = _node_at(chosen[0], "image")
    if not isinstance(image, yaml.ScalarNode):
        raise ManifestError(
            f"{path}: Deployment {name} container {_scalar_at(chosen[0], 'name')} has no image"
        )
    return image


def _node_at(node: yaml.Node | None, *keys: str) -> yaml.Node | None:
    """The node at the path of mapping keys under `node`, or None when any key is missing."""
    for key in keys:
        if not isinstance(node, yaml.MappingNode):
            return None
        node = next((v for k, v in node.value if k.value == key), None)
    return node


def _scalar_at(node: yaml.Node, *keys: str) -> str | None:
    found = _node_at(node, *keys)
    return found.value if isinstance(found, yaml.ScalarNode) else None
