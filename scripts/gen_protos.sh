#!/usr/bin/env bash
# Regenerate tfserving/protos/*_pb2.py and serving/protos/*_pb2.py (and the .pyi stubs) from the
# .proto files beside them.
#
#   PYTHON=/path/to/python scripts/gen_protos.sh
#
# PYTHON must have grpcio-tools, a developer's tool only (the generated code is committed, and
# nothing at run time needs protoc):
#   python3 -m venv /tmp/protoc && /tmp/protoc/bin/pip install grpcio-tools==1.75.1
# Its protoc's version is written into the generated code, which then refuses a protobuf runtime
# older than that: grpcio-tools 1.75.1 bundles protoc 31.1, whose code needs protobuf >= 6.31.1,
# TensorFlow 2.21's own floor (it allows protobuf 6.31.1 to 7.x). A newer grpcio-tools would
# raise that floor above what TensorFlow accepts.
#
# Run from anywhere; protoc sees the checkout root as its include path, so the files import each
# other as tfserving/protos/NAME.proto and the modules as tfserving.protos.NAME_pb2.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
for package in tfserving/protos serving/protos; do
  rm -f "$package"/*_pb2.py "$package"/*_pb2.pyi
  "$PYTHON" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. "$package"/*.proto
done
"$PYTHON" -m grpc_tools.protoc --version
