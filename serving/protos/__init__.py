"""The local server's own protos: messages only tensorflow_model_server's flags read (not the
client's, which are in tfserving.protos).

`session_bundle_config.proto` declares TF Serving's BatchingParameters (--batching_parameters_file)
with its field numbers, in the proto package `sidecar.serving`, so it loads beside TensorFlow's
and tensorflow-serving-api's modules in one process. The `*_pb2` modules are generated and
committed: `scripts/gen_protos.sh` regenerates them.
"""
