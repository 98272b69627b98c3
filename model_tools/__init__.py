"""Tools that lay out and convert SavedModels for TF Serving (TensorFlow for reexport only).

- prepare_model: a URL, tarball or folder laid out as BASE_PATH/VERSION/ (`python -m
  serving.prepare_model`, see docs/local_server.md)
- reexport:      wrap a uint8-pixel detector into one that takes JPEG bytes (`python -m
  serving.reexport`, see docs/reexport.md)
"""
