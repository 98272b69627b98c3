"""`python -m serving.prepare_model` (the documented command); the code is model_tools/."""

import sys

from model_tools.prepare_model import main

if __name__ == "__main__":
    sys.exit(main())
