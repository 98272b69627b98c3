"""TF Serving's gRPC messages, as this project's own protos: the client needs no TensorFlow.

The `.proto` files here declare the messages of tensorflow_serving/apis (Predict,
GetModelMetadata, GetModelStatus, HandleReloadConfigRequest, the warm-up file's PredictionLog),
of tensorflow_serving/config (the model config and monitoring config files the local server
reads) and the TensorFlow ones they carry (TensorProto, SignatureDef),
with TF Serving's field numbers and types, so their bytes are TF Serving's bytes. Only the fields
a client uses are declared; a server's other fields are kept as unknown fields.

The proto package is `sidecar.tfserving`, not `tensorflow.serving`: the messages then have names
of their own in protobuf's descriptor pool and load beside TensorFlow's generated modules in one
process (the local server, the tests). The gRPC method paths are TF Serving's all the same
(`tfserving.grpc_client` names them), and an `Any` from the server names TF Serving's type
(`type.googleapis.com/tensorflow.serving.SignatureDefMap`), so it is read by its bytes.

The `*_pb2.py` modules are generated and committed: `scripts/gen_protos.sh` regenerates them.
"""
