"""The synthetic sample sound archive that the demo (``make demo``) and the tests run on.

Not part of the ``asr`` package nor of its wheel: run it from the repository root with
``python -m sample_archive.build OUT_DIR [--seed 0]`` (see ``build.py``).
"""
