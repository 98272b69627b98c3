"""Serving images through the Docker SDK (no TensorFlow here).

- model_dir: check a model dir as TF Serving would load it; stream it as a tar
- reference: image names, tags and model names checked before Docker is touched
- progress:  follow pull/push event streams (progress per layer, error events raise)
- builder:   BuildContainer (removed whatever happens) and ImageBuilder (base, build, push)
- cli:       `python build_image.py` (see docs/packaging.md)
- base_image: the offline serving base image for the end-to-end test (issue 7)
"""
