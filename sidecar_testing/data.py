"""The shared test data: where it lives and what ../shared/README.md says is in it.

The data sits in ../shared beside the project root (CI has it too); tests and benchmarks
reference it by path and never copy it into the repository.
"""

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PIXEL_MODEL = SHARED / "models" / "ssd_mobilenet_v1_coco"
ENCODED_MODEL = SHARED / "models" / "ssd_mobilenet_v1_coco_encoded"
IMAGE1 = SHARED / "images" / "image1.jpg"
IMAGE2 = SHARED / "images" / "image2.jpg"
SHARED_LABELS = SHARED / "labels" / "mscoco_label_map.pbtxt"
# The shipped Kubernetes manifest (deploy/ validates and edits it).
MANIFEST = ROOT / "faster_rcnn_resnet_k8s.yaml"

COCO_DOG = 18
COCO_PERSON = 1
COCO_KITE = 38

# The two beagles in image1.jpg, [ymin, xmin, ymax, xmax]. Only boxes and classes are fixed
# values: scores differ from CPU to CPU, so tests compare them with `reference.ModelReference`.
LEFT_DOG = [0.017, 0.001, 0.868, 0.335]
RIGHT_DOG = [0.074, 0.322, 0.965, 0.971]

# A detection model's outputs for one image as a stub server sends them: a dog scoring 0.9
# and a person below the default threshold.
STUB_DETECTIONS = {
    "detection_boxes": [[0.1, 0.2, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0]],
    "detection_classes": [18.0, 1.0],
    "detection_scores": [0.9, 0.1],
    "num_detections": 2.0,
}
