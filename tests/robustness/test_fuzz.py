"""Fuzzing with hypothesis: hostile input only ever raises the project's own error types.

Targets: the Dockerfile parser and its typed layer, the image reference parser, the
.dockerignore reader and matcher, manifest / index / image config decoding, and the tar
reader (random entries built with tarfile, and byte mutations of valid archives). For the tar
reader the property is stronger: nothing is ever created outside the target directory.

Example counts are modest (PYBUILD_FUZZ_EXAMPLES, default 100) so the file runs in well under a
minute; raise it locally for a longer hunt. benchmarks/fuzz/ has an atheris driver.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builder.context.dockerignore import DockerignoreError, Matcher, read_ignore_lines
from dockerfile_grammar.errors import DockerfileError
from registry.errors import RegistryError

N = int(os.environ.get("PYBUILD_FUZZ_EXAMPLES", "100"))
FUZZ = settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- Dockerfile parser + typed instructions ---------------------------------------------------

KEYWORDS = ["FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
            "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL", "from",
            "run", "BOGUS"]
PIECES = ["--mount=type=cache,target=/x", "--mount=type=secret,id=a", "--from=0", "--chown=1:1", "--chmod=755",
          "--link", "--platform=$P", "--network=none", "--interval=5s", "AS", "base", "<<EOF", "EOF", "\\",
          "`", "[", "]", '"', "'", "${A:-b}", "${A:?}", "$A", "=", ",", "#", "# escape=`", "# syntax=x",
          "\n", " ", "\t", "/", "..", "*", "{", "}", "\\\n", "NONE", "CMD", "\r\n", "\x00", "é"]

dockerfile_text = st.one_of(
    st.text(max_size=400),
    st.lists(st.one_of(st.sampled_from(KEYWORDS), st.sampled_from(PIECES), st.text(max_size=8)),
             max_size=40).map(" ".join),
    st.lists(st.tuples(st.sampled_from(KEYWORDS),
                       st.lists(st.one_of(st.sampled_from(PIECES), st.text(max_size=6)), max_size=6)),
             min_size=1, max_size=8).map(lambda ls: "\n".join(k + " " + " ".join(a) for k, a in ls)),
)


@FUZZ
@given(dockerfile_text)
def test_dockerfile_parser_raises_only_dockerfile_error(text: str) -> None:
    from dockerfile_grammar import parse, parse_dockerfile
    try:
        parse(text)
        parse_dockerfile(text, "Dockerfile")
    except DockerfileError as exc:
        assert str(exc)


# -- references --------------------------------------------------------------------------------

REF_PIECES = ["docker.io", "localhost", "localhost:5000", "127.0.0.1:5000", "[::1]:5000", "library", "busybox",
              "a", "A", "_", "__", "-", ".", "..", "/", "//", ":", "::", "@", "sha256:", "sha256:" + "a" * 64,
              "sha512:" + "b" * 128, "latest", "v1.0", "x" * 130, "\n", " ", "%2F", "é"]


@FUZZ
@given(st.one_of(st.text(max_size=80), st.lists(st.sampled_from(REF_PIECES), max_size=10).map("".join)))
def test_reference_parser_raises_only_registry_error(text: str) -> None:
    from registry.reference import parse_reference
    try:
        ref = parse_reference(text)
    except RegistryError as exc:
        assert str(exc)
        return
    assert parse_reference(str(ref)) == ref     # what it prints, it reads back


# -- .dockerignore -----------------------------------------------------------------------------

IGNORE_PIECES = ["*", "**", "?", "[", "]", "[!a]", "[a-", "\\", "!", "/", ".", "..", "a", "b/", "#", " ", "\n",
                 "[^", "{", "}", "**/"]
ignore_text = st.lists(st.sampled_from(IGNORE_PIECES), max_size=20).map("".join)
paths = st.lists(st.sampled_from(["a", "b", "c", ".", "..", "*", "[", "\\", "x y", "é"]), min_size=1,
                 max_size=5).map("/".join)


@FUZZ
@given(st.one_of(ignore_text, st.text(max_size=60)), st.lists(paths, max_size=5))
def test_dockerignore_raises_only_dockerignore_error(text: str, names: list[str]) -> None:
    try:
        matcher = Matcher(read_ignore_lines(text))
        for name in names:
            assert isinstance(matcher.matches(name), bool)
    except DockerignoreError as exc:
        assert str(exc)


# -- manifests, indexes, configs ---------------------------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70), st.floats(allow_nan=False),
              st.text(max_size=20),
              st.sampled_from(["application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
                               "application/vnd.docker.distribution.manifest.v2+json", "sha256:" + "c" * 64,
                               "sha256:xyz", "linux", "amd64"])),
    lambda children: st.one_of(st.lists(children, max_size=4),
                               st.dictionaries(st.sampled_from(
                                   ["schemaVersion", "mediaType", "config", "layers", "manifests", "digest", "size",
                                    "platform", "architecture", "os", "rootfs", "diff_ids", "history", "annotations",
                                    "subject", "urls", "Env", "Cmd", "ExposedPorts", "Volumes", "Labels",
                                    "created", "type", "variant", "os.features", "artifactType"]),
                                   children, max_size=6)),
    max_leaves=25)


def _doc_bytes(value: object, raw: bytes) -> bytes:
    return raw if raw else json.dumps(value).encode()


@FUZZ
@given(json_values, st.one_of(st.just(b""), st.binary(max_size=60)),
       st.sampled_from([None, "application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.index.v1+json",
                        "text/plain"]))
def test_manifest_and_config_decoding_raise_only_registry_error(value, raw: bytes, media_type) -> None:  # type: ignore[no-untyped-def]
    from registry.manifest import ImageConfig, parse_manifest
    data = _doc_bytes(value, raw)
    try:
        parse_manifest(data, media_type)
    except RegistryError as exc:
        assert str(exc)
    try:
        ImageConfig.from_bytes(data)
    except RegistryError as exc:
        assert str(exc)


# -- the tar reader ----------------------------------------------------------------------------

NAMES = ["a", "b", "a/b", "a/b/c", "../x", "../../x", "/abs", "/", ".", "./a", "a/../../y", ".wh.a", "a/.wh.b",
         ".wh..wh..opq", "a/.wh..wh..opq", ".wh..", "l", "l/x", "l/../../z", "d/" * 3 + "e", "\u00e9"]
TARGETS = ["a", "/", "..", "../..", "/etc", "../outside", "a/b", "l", "l/x", "", "nowhere", "/a/../../x"]
TYPES = [tarfile.REGTYPE, tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE]
entries = st.lists(st.tuples(st.sampled_from(NAMES), st.sampled_from(TYPES), st.sampled_from(TARGETS),
                             st.integers(min_value=0, max_value=0o7777)), max_size=12)


def _tar_of(spec: list[tuple[str, bytes, str, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, target, mode in spec:
            ti = tarfile.TarInfo(name)
            ti.type, ti.mode = kind, mode
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                ti.linkname = target
            if kind == tarfile.REGTYPE:
                data = name.encode()
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def _tree(top: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            out.add(os.path.relpath(os.path.join(dirpath, n), top))
    return out


@FUZZ
@given(entries, st.sampled_from(["apply", "overlay", "none"]))
def test_tar_reader_contains_every_entry(spec, whiteouts: str) -> None:  # type: ignore[no-untyped-def]
    """Random entries (climbing names, links out, whiteouts, duplicates): extraction raises only
    ArchiveError and never creates, changes or removes anything outside the target."""
    from registry.tarsafe import extract_tar
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        outside = base / "outside"
        (outside / "a").mkdir(parents=True)
        (outside / "a" / "b").write_text("keep")
        target = base / "root"
        target.mkdir()
        os.symlink("../outside", target / "l")      # a planted link out, as an earlier layer might leave
        before = _tree(outside)
        try:
            extract_tar(io.BytesIO(_tar_of(spec)), target, whiteouts=whiteouts)
        except RegistryError as exc:
            assert str(exc)
        assert _tree(outside) == before
        assert (outside / "a" / "b").read_text() == "keep"
        assert not (base / "x").exists() and not (base / "y").exists() and not (base / "z").exists()


@FUZZ
@given(st.lists(st.tuples(st.integers(min_value=0, max_value=4095), st.integers(min_value=0, max_value=255)),
                min_size=1, max_size=8))
def test_tar_reader_on_mutated_layers_raises_only_registry_error(flips) -> None:  # type: ignore[no-untyped-def]
    """Byte flips in a gzip'ed and a plain layer: apply_layer raises only RegistryError."""
    import gzip
    from registry.tarsafe import apply_layer
    plain = bytearray(_tar_of([("a", tarfile.DIRTYPE, "", 0o755), ("a/f", tarfile.REGTYPE, "", 0o644),
                               ("l", tarfile.SYMTYPE, "a/f", 0o777), ("h", tarfile.LNKTYPE, "a/f", 0o644)]))
    for blob in (plain, bytearray(gzip.compress(bytes(plain)))):
        for pos, val in flips:
            blob[pos % len(blob)] = val
        with tempfile.TemporaryDirectory() as tmp:
            try:
                apply_layer(io.BytesIO(bytes(blob)), Path(tmp) / "t")
            except RegistryError as exc:
                assert str(exc)
