"""The tests' fixtures and hooks live in sidecar_testing.plugin, their helpers beside it in
sidecar_testing: test modules import those, never this file or each other."""

import pytest

# Before the plugin imports them: the shared helpers' plain asserts then report their values.
pytest.register_assert_rewrite("sidecar_testing")

pytest_plugins = ["sidecar_testing.plugin"]
