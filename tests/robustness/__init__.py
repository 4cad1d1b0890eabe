"""Tests of robustness."""
