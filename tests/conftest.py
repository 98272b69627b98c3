"""Shared test data paths and fixtures.

The data lives in ../shared beside the project root (CI has it too); tests reference it by path
and never copy it into the repository.
"""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PIXEL_MODEL = SHARED / "models" / "ssd_mobilenet_v1_coco"
ENCODED_MODEL = SHARED / "models" / "ssd_mobilenet_v1_coco_encoded"
IMAGE1 = SHARED / "images" / "image1.jpg"
IMAGE2 = SHARED / "images" / "image2.jpg"
SHARED_LABELS = SHARED / "labels" / "mscoco_label_map.pbtxt"
# The shipped Kubernetes manifest (deploy/ validates and edits it).
MANIFEST = ROOT / "faster_rcnn_resnet_k8s.yaml"

COCO_DOG = 18
COCO_PERSON = 1
COCO_KITE = 38


def pytest_sessionstart(session: pytest.Session) -> None:
    """Fail at once, with the reason, when ../shared is missing: every model test needs it."""
    if not PIXEL_MODEL.is_dir():
        raise pytest.UsageError(
            f"test data not found at {SHARED}: clone the project beside shared/"
        )


# Docker fixtures (daemon, local registries, offline base image, cleanup): tests/docker_support.py
from tests.docker_support import (  # noqa: E402, F401
    auth_registry,
    docker_cleanup,
    docker_client,
    local_registry,
    tiny_base_image,
)


@pytest.fixture(scope="session")
def pixel_server():
    """The local TF Serving stand-in serving PIXEL_MODEL (uint8 pixels), one per test session."""
    from tests.servers import LocalServer

    with LocalServer(PIXEL_MODEL, model_name="ssd_mobilenet_v1_coco") as server:
        yield server


@pytest.fixture(scope="session")
def encoded_server():
    """The local TF Serving stand-in serving ENCODED_MODEL ({"b64"} JPEG/PNG bytes)."""
    from tests.servers import LocalServer

    with LocalServer(ENCODED_MODEL, model_name="ssd_mobilenet_v1_coco_encoded") as server:
        yield server
