"""Image names checked before any Docker work, so a typo fails in a second, not after the copy.

The daemon would refuse a bad name too, but only at commit time and with a bare "invalid
reference format". The patterns follow the reference grammar of the distribution project
(github.com/distribution/reference, regexp.go), which is what dockerd and registries apply.
Every character class is spelled out in ASCII ([A-Za-z0-9]): Python's word class also matches
"ü", which the daemon refuses, and only at commit time, after the model has been copied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from image_builder.errors import BuildError

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_DOMAIN_PART = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"{_DOMAIN_PART}(?:\.{_DOMAIN_PART})*(?::[0-9]+)?"
_PATH = rf"{_COMPONENT}(?:/{_COMPONENT})*"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
REGISTRY_RE = re.compile(rf"{_DOMAIN}(?:/{_PATH})?")
IMAGE_RE = re.compile(_PATH)
TAG_RE = re.compile(_TAG)
# What `docker pull` takes, e.g. tensorflow/serving:2.18.0 or HOST:PORT/base@sha256:...
PULL_RE = re.compile(rf"(?:{_DOMAIN}/)?{_PATH}(?::{_TAG})?(?:@{_DIGEST})?")
MAX_NAME = 255
# A TF Serving model name ends up in a URL path (/v1/models/NAME) and a directory name.
MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class ImageReferenceError(BuildError):
    """An image name, tag or model name that Docker or TF Serving would refuse."""


@dataclass(frozen=True)
class ImageReference:
    """REGISTRY/IMAGE:TAG, where REGISTRY is HOST[:PORT][/PROJECT...] and may be empty.

    Checked when made (ImageReferenceError saying which part is wrong), so no ImageReference
    can reach the daemon's commit with a name it would refuse.
    """

    registry: str | None
    image: str
    tag: str

    def __post_init__(self) -> None:
        if self.registry is not None and not REGISTRY_RE.fullmatch(self.registry):
            raise ImageReferenceError(
                f"invalid registry {self.registry!r}: expected HOST[:PORT][/PROJECT], e.g. "
                "REGION-docker.pkg.dev/PROJECT/REPO or 127.0.0.1:5000/team"
            )
        if not IMAGE_RE.fullmatch(self.image):
            raise ImageReferenceError(
                f"invalid image name {self.image!r}: lowercase ASCII letters, digits and . _ - "
                "(not at the start or end), components separated by /"
            )
        if not TAG_RE.fullmatch(self.tag):
            raise ImageReferenceError(
                f"invalid tag {self.tag!r}: up to 128 ASCII letters, digits, _ . -, not "
                "starting with . or -"
            )
        if len(self.repository) > MAX_NAME:
            raise ImageReferenceError(
                f"image name {self.repository!r} is longer than {MAX_NAME} characters"
            )

    @property
    def repository(self) -> str:
        return f"{self.registry}/{self.image}" if self.registry else self.image

    def __str__(self) -> str:
        return f"{self.repository}:{self.tag}"

    def with_digest(self, digest: str) -> str:
        return f"{self.repository}@{digest}"


def image_reference(registry: str | None, image: str, tag: str) -> ImageReference:
    """The reference to build from the user's parts (a trailing / on the registry is fine)."""
    return ImageReference(registry.rstrip("/") if registry is not None else None, image, tag)


def check_base_image(reference: str) -> str:
    """`reference` if the daemon could pull it, else ImageReferenceError (before any pull)."""
    if not PULL_RE.fullmatch(reference):
        raise ImageReferenceError(
            f"invalid base image {reference!r}: expected [REGISTRY/]NAME[:TAG][@sha256:DIGEST] "
            "in ASCII, e.g. tensorflow/serving:2.18.0"
        )
    return reference


def check_model_name(name: str) -> str:
    if not MODEL_NAME_RE.fullmatch(name):
        raise ImageReferenceError(
            f"invalid model name {name!r}: ASCII letters, digits, _ . - (it becomes a directory "
            "and a URL path segment)"
        )
    return name
