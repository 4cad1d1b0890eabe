"""Coverage-guided fuzzing of pybuild's input readers with atheris (optional: `pip install atheris`).

    python3 benchmarks/fuzz/fuzz_pybuild.py TARGET [libFuzzer options, e.g. -max_total_time=300]

TARGET is one of: dockerfile, reference, dockerignore, manifest, config, tar. Each target feeds
the fuzzer's bytes to one reader; anything but the project's own error types is a crash that
libFuzzer reports with the input that caused it (saved as crash-<sha1>). Not part of the test
suite: tests/robustness/test_fuzz.py runs the same properties under hypothesis in CI.
"""
from __future__ import annotations

import io
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    from builder.context.dockerignore import DockerignoreError, Matcher, read_ignore_lines
    from dockerfile_grammar import parse_dockerfile
    from dockerfile_grammar.errors import DockerfileError
    from registry.errors import RegistryError
    from registry.manifest import ImageConfig, parse_manifest
    from registry.reference import parse_reference
    from registry.tarsafe import apply_layer


def _text(data: bytes) -> str:
    return atheris.FuzzedDataProvider(data).ConsumeUnicodeNoSurrogates(len(data))


def dockerfile(data: bytes) -> None:
    try:
        parse_dockerfile(_text(data), "Dockerfile")
    except DockerfileError:
        pass


def reference(data: bytes) -> None:
    try:
        parse_reference(_text(data))
    except RegistryError:
        pass


def dockerignore(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    patterns = fdp.ConsumeUnicodeNoSurrogates(256)
    path = fdp.ConsumeUnicodeNoSurrogates(64)
    try:
        Matcher(read_ignore_lines(patterns)).matches(path)
    except DockerignoreError:
        pass


def manifest(data: bytes) -> None:
    try:
        parse_manifest(data)
    except RegistryError:
        pass


def config(data: bytes) -> None:
    try:
        ImageConfig.from_bytes(data)
    except RegistryError:
        pass


def tar(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            apply_layer(io.BytesIO(data), tmp + "/t")
        except RegistryError:
            pass


TARGETS = {f.__name__: f for f in (dockerfile, reference, dockerignore, manifest, config, tar)}


def main() -> None:
    """Run the target named by the first argument under libFuzzer."""
    if len(sys.argv) < 2 or sys.argv[1] not in TARGETS:
        sys.exit(f"usage: {sys.argv[0]} {{{','.join(TARGETS)}}} [libFuzzer options]")
    target = TARGETS[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
