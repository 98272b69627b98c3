"""Serving images through the Docker SDK (no TensorFlow here).

- errors:    BuildError, the root of everything the package raises
- model_dir: check a model dir as TF Serving would load it, and scan all of it (symlinks,
             modes) before Docker is touched; stream it as a tar
- reference: image names, tags and model names checked before Docker is touched
- progress:  follow pull/push event streams (error events raise), progress as data
- builder:   BuildContainer (removed whatever happens) and ImageBuilder (base, build, push)
- cli:       `python build_image.py` (see docs/packaging.md): log lines, bars, flag hints

The library logs (logging) and reports progress to a callback; only the CLI writes to the
terminal.
"""
