"""The deploy package's root exception, under the project's SidecarError."""

from __future__ import annotations

from tfserving.errors import SidecarError


class DeployError(SidecarError):
    """The root of what deploy raises: a manifest that cannot be read or edited."""
