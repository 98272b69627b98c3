"""`python -m serving.reexport`, the documented command: the code is model_tools.reexport."""

from model_tools.reexport import main

if __name__ == "__main__":
    main()
