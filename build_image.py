"""Package a TF SavedModel into a TF Serving image and push it: `python build_image.py --help`."""

from image_builder.cli import main

if __name__ == "__main__":
    main()
