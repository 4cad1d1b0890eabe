"""The image model: round trips of all four manifest kinds and configs, platforms, selection."""
import json

import pytest

from registry import mediatypes as mt
from registry.digest import digest_bytes
from registry.errors import NotFoundError
from registry.manifest import (ContainerConfig, Descriptor, History, ImageConfig, Index, InvalidManifestError,
                               Manifest, parse_manifest, select_manifest)
from registry.platform import InvalidPlatformError, Platform, host_platform, parse_platform, platform_matches

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
D3 = "sha256:" + "3" * 64

DOCKER_V2 = json.dumps({
    "schemaVersion": 2,
    "mediaType": mt.DOCKER_MANIFEST,
    "config": {"mediaType": mt.DOCKER_CONFIG, "size": 1469, "digest": D1},
    "layers": [{"mediaType": mt.DOCKER_LAYER_GZIP, "size": 2479, "digest": D2},
               {"mediaType": mt.DOCKER_FOREIGN_LAYER, "size": 5, "digest": D3,
                "urls": ["https://example.com/layer"]}],
}, indent=3).encode()

DOCKER_LIST = json.dumps({
    "schemaVersion": 2,
    "mediaType": mt.DOCKER_MANIFEST_LIST,
    "manifests": [
        {"mediaType": mt.DOCKER_MANIFEST, "size": 527, "digest": D1,
         "platform": {"architecture": "amd64", "os": "linux"}},
        {"mediaType": mt.DOCKER_MANIFEST, "size": 527, "digest": D2,
         "platform": {"architecture": "arm", "os": "linux", "variant": "v6"}},
        {"mediaType": mt.DOCKER_MANIFEST, "size": 527, "digest": D3,
         "platform": {"architecture": "arm64", "os": "linux", "variant": "v8", "features": ["sse4"]}},
    ],
}).encode()

OCI_INDEX = json.dumps({
    "schemaVersion": 2,
    "mediaType": mt.OCI_INDEX,
    "manifests": [
        {"mediaType": mt.OCI_MANIFEST, "size": 10, "digest": D1,
         "platform": {"architecture": "arm64", "os": "linux"}},
        {"mediaType": mt.OCI_MANIFEST, "size": 10, "digest": D2,
         "platform": {"architecture": "unknown", "os": "unknown"},
         "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                         "vnd.docker.reference.digest": D1}},
    ],
    "annotations": {"org.opencontainers.image.created": "2024-01-01T00:00:00Z"},
    "x-unknown": {"kept": True},
}).encode()

OCI_MANIFEST = json.dumps({
    "schemaVersion": 2,
    "mediaType": mt.OCI_MANIFEST,
    "artifactType": "application/example",
    "config": {"mediaType": mt.OCI_EMPTY, "digest": D1, "size": 2, "data": "e30="},
    "layers": [{"mediaType": mt.OCI_LAYER_ZSTD, "digest": D2, "size": 7,
                "annotations": {"org.opencontainers.image.title": "x"}, "x-field": 1}],
    "subject": {"mediaType": mt.OCI_MANIFEST, "digest": D3, "size": 99},
}).encode()


@pytest.mark.parametrize("data, cls, media_type", [
    (DOCKER_V2, Manifest, mt.DOCKER_MANIFEST),
    (DOCKER_LIST, Index, mt.DOCKER_MANIFEST_LIST),
    (OCI_INDEX, Index, mt.OCI_INDEX),
    (OCI_MANIFEST, Manifest, mt.OCI_MANIFEST),
])
def test_parse_all_four_kinds_and_round_trip(data, cls, media_type):
    doc = parse_manifest(data)
    assert isinstance(doc, cls) and doc.media_type == media_type
    # Re-serializing keeps every field, known or not (key order and whitespace may differ).
    assert json.loads(doc.to_bytes()) == json.loads(data)
    # Our own serialization is a fixed point and its digest is over the exact bytes.
    again = parse_manifest(doc.to_bytes())
    assert again.to_bytes() == doc.to_bytes()
    assert doc.descriptor().digest == digest_bytes(doc.to_bytes())
    assert doc.descriptor().size == len(doc.to_bytes())


def test_details_survive():
    m = Manifest.from_bytes(DOCKER_V2)
    assert m.is_docker and m.layers[1].urls == ["https://example.com/layer"]
    o = Manifest.from_bytes(OCI_MANIFEST)
    assert o.artifact_type == "application/example" and o.config.data == "e30="
    assert o.subject.digest == D3 and o.layers[0].extra == {"x-field": 1}
    lst = Index.from_bytes(DOCKER_LIST)
    assert lst.manifests[2].platform == Platform("linux", "arm64", "v8", features=("sse4",))
    assert Index.from_bytes(OCI_INDEX).extra == {"x-unknown": {"kept": True}}


def test_serialization_is_compact_and_ordered():
    m = Manifest(config=Descriptor(mt.OCI_CONFIG, D1, 3), layers=[Descriptor(mt.OCI_LAYER_GZIP, D2, 4)],
                 annotations={"b": "2", "a": "1"})
    text = m.to_bytes().decode()
    assert text.startswith('{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":')
    assert " " not in text and text.index('"a"') < text.index('"b"')


def test_kind_from_content_type_or_shape():
    bare = json.dumps({"schemaVersion": 2, "manifests": []}).encode()
    assert isinstance(parse_manifest(bare), Index)
    bare_m = json.dumps({"schemaVersion": 2, "config": {"digest": D1, "size": 1}, "layers": []}).encode()
    assert parse_manifest(bare_m, mt.DOCKER_MANIFEST).media_type == mt.DOCKER_MANIFEST
    assert parse_manifest(bare_m).media_type == mt.OCI_MANIFEST
    assert parse_manifest(bare, mt.DOCKER_MANIFEST_LIST).media_type == mt.DOCKER_MANIFEST_LIST


@pytest.mark.parametrize("data, why", [
    (b"not json", "not valid JSON"),
    (b"[]", "expected a JSON object"),
    (json.dumps({"schemaVersion": 1, "name": "x", "fsLayers": []}).encode(), "schema 1"),
    (json.dumps({"mediaType": mt.DOCKER_MANIFEST_V1_SIGNED}).encode(), "schema 1"),
    (json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST, "layers": []}).encode(), "config"),
    (json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                 "config": {"digest": "sha256:abc", "size": 1}}).encode(), "invalid digest"),
    (json.dumps({"schemaVersion": 2, "mediaType": mt.OCI_MANIFEST,
                 "config": {"digest": D1, "size": -1}}).encode(), "non-negative"),
    (json.dumps({"schemaVersion": 2, "mediaType": "text/plain"}).encode(), "unsupported manifest media type"),
    (json.dumps({"schemaVersion": 3}).encode(), "schemaVersion"),
])
def test_invalid_documents(data, why):
    with pytest.raises(InvalidManifestError, match=why):
        parse_manifest(data, where="test doc")


DOCKER_CONFIG = {
    "architecture": "amd64",
    "config": {
        "Hostname": "", "Domainname": "", "User": "app", "AttachStdin": False,
        "ExposedPorts": {"8080/tcp": {}, "53/udp": {}},
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "A=1"],
        "Cmd": ["sh"], "Entrypoint": None, "Image": "sha256:" + "9" * 64,
        "Volumes": {"/data": {}}, "WorkingDir": "/srv", "Labels": {"z": "1", "a": "2"},
        "OnBuild": ["RUN echo hi"], "StopSignal": "SIGQUIT", "ArgsEscaped": True, "Shell": ["/bin/bash", "-c"],
        "Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 30000000000, "Retries": 3},
    },
    "container": "abc", "docker_version": "20.10.24",
    "created": "2024-05-01T10:00:00.123456789Z",
    "author": "someone",
    "history": [
        {"created": "2024-05-01T10:00:00Z", "created_by": "/bin/sh -c #(nop) ADD file:x in / "},
        {"created": "2024-05-01T10:00:01Z", "created_by": "/bin/sh -c #(nop)  CMD [\"sh\"]", "empty_layer": True},
    ],
    "os": "linux",
    "rootfs": {"type": "layers", "diff_ids": [D1]},
}


def test_image_config_round_trip_keeps_everything():
    data = json.dumps(DOCKER_CONFIG).encode()
    cfg = ImageConfig.from_bytes(data)
    c = cfg.config
    assert c.user == "app" and c.cmd == ["sh"] and c.entrypoint is None and c.working_dir == "/srv"
    assert c.exposed_ports == {"8080/tcp": {}, "53/udp": {}} and c.volumes == {"/data": {}}
    assert c.on_build == ["RUN echo hi"] and c.shell == ["/bin/bash", "-c"] and c.args_escaped
    assert c.healthcheck["Retries"] == 3 and c.stop_signal == "SIGQUIT"
    assert c.extra["Hostname"] == "" and c.extra["Image"].startswith("sha256:")
    assert cfg.extra == {"container": "abc", "docker_version": "20.10.24"}
    assert cfg.diff_ids == [D1] and cfg.platform == Platform("linux", "amd64")
    assert [h.empty_layer for h in cfg.history] == [False, True]
    assert len(cfg.layer_history()) == 1
    out = json.loads(cfg.to_bytes())
    expected = json.loads(data)
    del expected["config"]["Entrypoint"]          # null and absent mean the same
    assert out == expected
    assert ImageConfig.from_bytes(cfg.to_bytes()).to_bytes() == cfg.to_bytes()


def test_new_config_defaults_and_env_helpers():
    cfg = ImageConfig(architecture="arm64", variant="v8", created="2024-01-01T00:00:00Z",
                      history=[History(created_by="import", comment="x")])
    cfg.config.set_env("PATH", "/bin")
    cfg.config.set_env("A", "1")
    cfg.config.set_env("PATH", "/usr/bin:/bin")
    assert cfg.config.env == ["PATH=/usr/bin:/bin", "A=1"]
    assert cfg.config.env_dict() == {"PATH": "/usr/bin:/bin", "A": "1"}
    d = json.loads(cfg.to_bytes())
    assert d["rootfs"] == {"type": "layers", "diff_ids": []} and d["variant"] == "v8"
    assert list(d) == ["created", "architecture", "os", "variant", "config", "rootfs", "history"]
    assert ContainerConfig(cmd=[]).to_dict() == {"Cmd": []}
    with pytest.raises(InvalidManifestError, match="diff_ids"):
        ImageConfig.from_dict({"rootfs": {"diff_ids": ["nope"]}})


@pytest.mark.parametrize("text, expected", [
    ("linux/amd64", Platform("linux", "amd64")),
    ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
    ("linux/aarch64", Platform("linux", "arm64")),
    ("linux/x86_64", Platform("linux", "amd64")),
    ("linux/arm/7", Platform("linux", "arm", "v7")),
    ("Linux/ARM64", Platform("linux", "arm64")),
    ("arm64", Platform("linux", "arm64")),
    ("windows/amd64", Platform("windows", "amd64")),
])
def test_parse_platform(text, expected):
    assert parse_platform(text) == expected


@pytest.mark.parametrize("text", ["", "/", "linux/", "a/b/c/d", "beos/amd64"])
def test_parse_platform_invalid(text):
    with pytest.raises(InvalidPlatformError, match="platform"):
        parse_platform(text)


def test_host_platform_is_linux_and_known():
    p = host_platform()
    assert p.os == "linux" and p.architecture in {"amd64", "arm64", "arm", "386", "ppc64le", "s390x", "riscv64"}
    assert platform_matches(p, p)


def test_platform_matching_rules():
    want_arm7 = Platform("linux", "arm", "v7")
    assert platform_matches(want_arm7, Platform("linux", "arm", "v6"))
    assert not platform_matches(Platform("linux", "arm", "v6"), Platform("linux", "arm", "v7"))
    assert platform_matches(Platform("linux", "arm64", "v8"), Platform("linux", "arm64"))
    assert platform_matches(Platform("linux", "arm64"), Platform("linux", "aarch64", "8"))
    assert not platform_matches(Platform("linux", "amd64"), Platform("linux", "arm64"))
    assert not platform_matches(Platform("linux", "amd64"), Platform("windows", "amd64"))


def test_select_manifest():
    lst = Index.from_bytes(DOCKER_LIST)
    assert lst.select(Platform("linux", "amd64")).digest == D1
    assert lst.select(Platform("linux", "arm", "v7")).digest == D2     # v6 runs on v7
    assert lst.select(Platform("linux", "arm64")).digest == D3
    with pytest.raises(NotFoundError, match="no image for platform linux/s390x.*linux/amd64"):
        lst.select(Platform("linux", "s390x"))
    oci = Index.from_bytes(OCI_INDEX)
    assert oci.platforms() == [Platform("linux", "arm64")]            # attestation left out
    with pytest.raises(NotFoundError):
        oci.select(Platform("unknown", "unknown"))
    # An entry without a platform is the fallback when nothing matches exactly.
    plain = [Descriptor(mt.OCI_MANIFEST, D3, 1)]
    assert select_manifest(plain, Platform("linux", "amd64")).digest == D3
