"""set_deployment_image: the one-line edit build_image.py --manifest makes to the manifest."""

import difflib
import shutil
from pathlib import Path

import pytest
import yaml

from deploy.manifest import ManifestError, set_deployment_image
from sidecar_testing.data import MANIFEST

NEW_IMAGE = (
    "europe-west1-docker.pkg.dev/my-project/models/faster_rcnn_resnet_serving"
    "@sha256:9f7eca6da7d833b240f7c54b630a9f85df8dbdfe46abe2b99651278dc4b13c53"
)


def deployment(containers: str, name: str = "web") -> str:
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
spec:
  template:
    spec:
      containers:
{containers}"""


def container(name: str, image: str | None = "x:1", comment: str = "") -> str:
    lines = f"        - name: {name}\n"
    return lines + (f"          image: {image}{comment}\n" if image else "")


SERVICE = "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\n"


def write(tmp_path: Path, text: str, newline: str = "\n") -> Path:
    path = tmp_path / "manifest.yaml"
    path.write_bytes(text.replace("\n", newline).encode())
    return path


def images(path: Path) -> list[str]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    return [
        c["image"]
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    ]


def test_shipped_manifest_changes_only_the_image_line(tmp_path: Path) -> None:
    path = tmp_path / MANIFEST.name
    shutil.copy(MANIFEST, path)
    before = MANIFEST.read_text().splitlines()

    old = set_deployment_image(path, NEW_IMAGE)

    after = path.read_text().splitlines()
    changed = [line for line in difflib.ndiff(before, after) if line[:1] in "+-"]
    assert changed == [f"-           image: {old}", f"+           image: {NEW_IMAGE}"]
    assert images(path) == [NEW_IMAGE]
    assert old.endswith("@sha256:" + "0" * 64)


@pytest.mark.parametrize(
    ("written", "expected"),
    [("'old:1'", f"'{NEW_IMAGE}'"), ('"old:1"', f'"{NEW_IMAGE}"'), ("old:1", NEW_IMAGE)],
)
def test_quoting_style_is_kept(tmp_path: Path, written: str, expected: str) -> None:
    path = write(tmp_path, deployment(container("app", written, "  # pinned")))

    assert set_deployment_image(path, NEW_IMAGE) == "old:1"

    assert f"image: {expected}  # pinned\n" in path.read_text()
    assert images(path) == [NEW_IMAGE]


def test_crlf_line_endings_and_other_documents_are_kept(tmp_path: Path) -> None:
    original = SERVICE + "---\n" + deployment(container("app", "old:1"))
    path = write(tmp_path, original, newline="\r\n")

    set_deployment_image(path, NEW_IMAGE)

    expected = original.replace("old:1", NEW_IMAGE).replace("\n", "\r\n")
    assert path.read_bytes() == expected.encode()


def test_named_container_among_several(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        deployment(container("proxy", "envoy:1") + container("tf-serving", "old:1")),
    )

    assert set_deployment_image(path, NEW_IMAGE, container="tf-serving") == "old:1"

    assert images(path) == ["envoy:1", NEW_IMAGE]


@pytest.mark.parametrize(
    ("text", "container", "message"),
    [
        (SERVICE, None, "has no Deployment"),
        (
            deployment(container("a"), "one") + "---\n" + deployment(container("a"), "two"),
            None,
            "2 Deployments (one, two): ambiguous",
        ),
        (
            deployment(container("a") + container("b")),
            None,
            "2 containers (a, b): ambiguous",
        ),
        (deployment(container("a")), "b", "no single container named 'b'"),
        (deployment(container("a", None)), None, "container a has no image"),
        ("kind: Deployment\nspec: [unclosed\n", None, "is not valid YAML"),
    ],
)
def test_refuses_to_guess(tmp_path: Path, text: str, container: str | None, message: str) -> None:
    path = write(tmp_path, text)

    with pytest.raises(ManifestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        set_deployment_image(path, NEW_IMAGE, container=container)

    assert path.read_text() == text


@pytest.mark.parametrize("bad", ["", "two words", "repo:1 # comment"])
def test_rejects_a_value_that_is_no_image_reference(tmp_path: Path, bad: str) -> None:
    text = deployment(container("a"))
    path = write(tmp_path, text)

    with pytest.raises(ManifestError, match="not an image reference"):
        set_deployment_image(path, bad)

    assert path.read_text() == text


def test_value_yaml_would_misread_is_refused(tmp_path: Path) -> None:
    """A plain scalar starting with '[' would be read back as a list: caught by the re-parse."""
    text = deployment(container("a"))
    path = write(tmp_path, text)

    with pytest.raises(ManifestError, match="would be read back as"):
        set_deployment_image(path, "[x]")

    assert path.read_text() == text
