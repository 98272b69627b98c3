"""The model tools' errors: one root, below the project's."""

from tfserving.errors import SidecarError


class ModelToolError(SidecarError):
    """A model could not be prepared or converted; the message says why and what to do."""
