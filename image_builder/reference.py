"""Image names checked before any Docker work, so a typo fails in a second, not after the copy.

The daemon would refuse a bad name too, but only at commit time and with a bare "invalid
reference format". The patterns follow the reference grammar of the distribution project
(github.com/distribution/reference, regexp.go), which is what dockerd and registries apply.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?"
_PATH = rf"{_COMPONENT}(?:/{_COMPONENT})*"
REGISTRY_RE = re.compile(rf"{_DOMAIN}(?:/{_PATH})?")
IMAGE_RE = re.compile(_PATH)
TAG_RE = re.compile(r"[\w][\w.-]{0,127}")
MAX_NAME = 255
# A TF Serving model name ends up in a URL path (/v1/models/NAME) and a directory name.
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ReferenceError(ValueError):
    """An image name, tag or model name that Docker or TF Serving would refuse."""


@dataclass(frozen=True)
class ImageReference:
    """REGISTRY/IMAGE:TAG, where REGISTRY is HOST[:PORT][/PROJECT...] and may be empty."""

    registry: str | None
    image: str
    tag: str

    @property
    def repository(self) -> str:
        return f"{self.registry}/{self.image}" if self.registry else self.image

    def __str__(self) -> str:
        return f"{self.repository}:{self.tag}"

    def with_digest(self, digest: str) -> str:
        return f"{self.repository}@{digest}"


def image_reference(registry: str | None, image: str, tag: str) -> ImageReference:
    """The reference to build, or ReferenceError saying which part is wrong and why."""
    if registry is not None:
        registry = registry.rstrip("/")
        if not REGISTRY_RE.fullmatch(registry):
            raise ReferenceError(
                f"invalid registry {registry!r}: expected HOST[:PORT][/PROJECT], e.g. "
                "REGION-docker.pkg.dev/PROJECT/REPO or 127.0.0.1:5000/team"
            )
    if not IMAGE_RE.fullmatch(image):
        raise ReferenceError(
            f"invalid image name {image!r}: lowercase letters, digits and . _ - (not at the "
            "start or end), components separated by /"
        )
    if not TAG_RE.fullmatch(tag):
        raise ReferenceError(
            f"invalid tag {tag!r}: up to 128 letters, digits, _ . -, not starting with . or -"
        )
    ref = ImageReference(registry, image, tag)
    if len(ref.repository) > MAX_NAME:
        raise ReferenceError(f"image name {ref.repository!r} is longer than {MAX_NAME} characters")
    return ref


def check_model_name(name: str) -> str:
    if not MODEL_NAME_RE.fullmatch(name):
        raise ReferenceError(
            f"invalid model name {name!r}: letters, digits, _ . - (it becomes a directory and "
            "a URL path segment)"
        )
    return name
