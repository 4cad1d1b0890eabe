"""Containers: instances of images made by `pybuild run`, with their records, logs, diff and commit."""
