"""Detect objects in a photo with a model served by TF Serving: `python client.py --help`."""

from object_detection.cli import main

if __name__ == "__main__":
    main()
