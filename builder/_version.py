"""The version of pybuild: the only place it is written (pyproject.toml reads it from here).

Kept free of imports so that `pybuild --version` costs no more than the interpreter's start.
"""
__version__ = "0.1.0"
