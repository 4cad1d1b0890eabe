"""Tests of dockerfile_grammar."""
