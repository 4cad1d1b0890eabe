""""Did you mean ...?" suggestions, chosen the way BuildKit's suggest package chooses them:
the first option at the smallest Levenshtein distance, and only if that distance is at most 2."""
from __future__ import annotations

from typing import Iterable


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insertions, deletions, substitutions) between two strings."""
    if len(a) < len(b):
        a, b = b, a
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def suggest(value: str, options: Iterable[str], case_sensitive: bool = True) -> str:
    """The closest option to ``value`` ("" when none is within distance 2 or it matches exactly).

    Case-insensitive search returns the option in the case style of ``value``.
    """
    key = value if case_sensitive else value.lower()
    match = ""
    best = 3
    for opt in options:
        cand = opt if case_sensitive else opt.lower()
        if cand == key:
            return ""
        dist = levenshtein(key, cand)
        if dist < best:
            best = dist
            match = opt if case_sensitive else _match_case(cand, value)
    return match


def _match_case(option: str, original: str) -> str:
    if original == original.lower():
        return option.lower()
    if original == original.upper():
        return option.upper()
    return option
