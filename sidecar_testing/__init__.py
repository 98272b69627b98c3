"""Helpers the tests and the benchmarks share, kept out of tests/ so that neither imports a test
module.

- `data`: where ../shared is and what its README says is in it (COCO ids, the beagles' boxes).
- `servers`: the local TF Serving stand-in as a real process (`LocalServer`), free ports, and
  the server's own count of the predict requests it answered.
- `docker`: the Docker daemon, local registries, an offline base image, cleanup of builds.
- `reference`: the shared models called in-process, what a server must answer on this CPU.
- `cli`: client.py run in-process, as the CLI tests drive it.
- `plugin`: the pytest fixtures and hooks built on the above; tests/conftest.py registers it
  with `pytest_plugins = ["sidecar_testing.plugin"]`.

It lives in the checkout only: pyproject.toml lists the wheel's packages, and this is not one.
"""
