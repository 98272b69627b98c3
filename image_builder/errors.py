"""The root of what image_builder raises, in a module of its own so that every module of the
package can derive from it without importing the Docker SDK (reference.py and model_dir.py run
before Docker is touched).
"""

from __future__ import annotations

from tfserving.errors import SidecarError


class BuildError(SidecarError):
    """A step failed; the message says which step, the daemon's or registry's reason, what to do.

    Messages speak of the library, never of command-line flags: the CLI adds those.
    """
