#!/bin/bash
# The serving base image's entrypoint, with the contract of tensorflow/serving's
# /usr/bin/tf_serving_entrypoint.sh: serve ${MODEL_BASE_PATH}/${MODEL_NAME} on gRPC port 8500 and
# REST port 8501, and append the container's arguments, so `docker run IMAGE --rest_api_port=9000`
# works as with the real image (the server takes the last value of a repeated flag).
# The project's local server stands in for tensorflow_model_server and serves both ports.
exec python -m serving.local_server --port=8500 --rest_api_port=8501 \
  --model_name="${MODEL_NAME}" --model_base_path="${MODEL_BASE_PATH}/${MODEL_NAME}" "$@"
