"""The detection package's exceptions: one root, DetectionError, under the project's SidecarError.

They are about files and answers a user can fix: an image that cannot be read, a label map
that does not parse, an output path that cannot be written, a server answer that is not a
detection model's. Each message is one line and speaks of the library; the CLI adds flags.
"""

from __future__ import annotations

from tfserving.errors import SidecarError


class DetectionError(SidecarError):
    """The root of what object_detection raises."""


class ImageError(DetectionError, ValueError):
    """An image file that cannot be read or decoded; the message says why."""


class LabelMapError(DetectionError, ValueError):
    """A label map (.pbtxt) that does not parse; the message names file and line."""


class OutputError(DetectionError, ValueError):
    """A result that cannot be written where it was asked to go."""


class DetectionOutputError(DetectionError):
    """The server answered, but not with a detection model's outputs (or not well-formed)."""
