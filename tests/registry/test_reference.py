"""Reference parsing and normalization, against vectors from Docker's reference test tables."""
import pytest
from hypothesis import given, settings, strategies as st

from registry.errors import InvalidReferenceError
from registry.reference import Reference, is_valid_tag, parse_reference

F64 = "f" * 64
F128 = "f" * 128


@pytest.mark.parametrize("text, registry, repository, tag, digest", [
    ("busybox", "docker.io", "library/busybox", "latest", None),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", None),
    ("library/ubuntu", "docker.io", "library/ubuntu", "latest", None),
    ("docker.io/library/ubuntu", "docker.io", "library/ubuntu", "latest", None),
    ("index.docker.io/library/ubuntu", "docker.io", "library/ubuntu", "latest", None),
    ("index.docker.io/ubuntu", "docker.io", "library/ubuntu", "latest", None),
    ("docker.io/debian", "docker.io", "library/debian", "latest", None),
    ("fooo/bar", "docker.io", "fooo/bar", "latest", None),
    ("nonlibrary/ubuntu", "docker.io", "nonlibrary/ubuntu", "latest", None),
    ("other/library", "docker.io", "other/library", "latest", None),
    ("ubuntu-12.04-base", "docker.io", "library/ubuntu-12.04-base", "latest", None),
    ("test_com", "docker.io", "library/test_com", "latest", None),
    ("test.com:tag", "docker.io", "library/test.com", "tag", None),
    ("test.com:5000", "docker.io", "library/test.com", "5000", None),
    ("test.com/repo:tag", "test.com", "repo", "tag", None),
    ("test:5000/repo", "test:5000", "repo", "latest", None),
    ("test:5000/repo:tag", "test:5000", "repo", "tag", None),
    (f"test:5000/repo@sha256:{F64}", "test:5000", "repo", None, f"sha256:{F64}"),
    (f"test:5000/repo:tag@sha256:{F64}", "test:5000", "repo", "tag", f"sha256:{F64}"),
    (f"repo@sha256:{F64}", "docker.io", "library/repo", None, f"sha256:{F64}"),
    ("lowercase:Uppercase", "docker.io", "library/lowercase", "Uppercase", None),
    ("sub-dom1.foo.com/bar/baz/quux", "sub-dom1.foo.com", "bar/baz/quux", "latest", None),
    ("sub-dom1.foo.com/bar/baz/quux:some-long-tag", "sub-dom1.foo.com", "bar/baz/quux", "some-long-tag", None),
    ("b.gcr.io/test.example.com/my-app:test.example.com", "b.gcr.io", "test.example.com/my-app",
     "test.example.com", None),
    ("xn--n3h.com/myimage:xn--n3h.com", "xn--n3h.com", "myimage", "xn--n3h.com", None),
    (f"xn--7o8h.com/myimage:xn--7o8h.com@sha512:{F128}", "xn--7o8h.com", "myimage", "xn--7o8h.com",
     f"sha512:{F128}"),
    ("foo_bar.com:8080", "docker.io", "library/foo_bar.com", "8080", None),
    ("foo/foo_bar.com:8080", "docker.io", "foo/foo_bar.com", "8080", None),
    ("192.168.1.1", "docker.io", "library/192.168.1.1", "latest", None),
    ("192.168.1.1:tag", "docker.io", "library/192.168.1.1", "tag", None),
    ("192.168.1.1:5000", "docker.io", "library/192.168.1.1", "5000", None),
    ("192.168.1.1/repo", "192.168.1.1", "repo", "latest", None),
    ("192.168.1.1:5000/repo", "192.168.1.1:5000", "repo", "latest", None),
    ("192.168.1.1:5000/repo:5050", "192.168.1.1:5000", "repo", "5050", None),
    ("127.0.0.1:8000/private/moonbase", "127.0.0.1:8000", "private/moonbase", "latest", None),
    ("[2001:db8::1]/repo", "[2001:db8::1]", "repo", "latest", None),
    ("[2001:db8:1:2:3:4:5:6]/repo:tag", "[2001:db8:1:2:3:4:5:6]", "repo", "tag", None),
    ("[2001:db8::1]:5000/repo", "[2001:db8::1]:5000", "repo", "latest", None),
    (f"[2001:db8::1]:5000/repo:tag@sha256:{F64}", "[2001:db8::1]:5000", "repo", "tag", f"sha256:{F64}"),
    ("[2001:db8::]:5000/repo", "[2001:db8::]:5000", "repo", "latest", None),
    ("[::1]:5000/repo", "[::1]:5000", "repo", "latest", None),
    ("localhost/privatebase", "localhost", "privatebase", "latest", None),
    ("localhost:8000/private/moonbase", "localhost:8000", "private/moonbase", "latest", None),
    ("example.com:8000/private/moonbase", "example.com:8000", "private/moonbase", "latest", None),
    ("Foo/bar", "Foo", "bar", "latest", None),   # an upper-case first component is a host
    ("a__b/c--d", "docker.io", "a__b/c--d", "latest", None),
    ("a" * 247 + ":x", "docker.io", "library/" + "a" * 247, "x", None),
])
def test_parse_valid(text, registry, repository, tag, digest):
    ref = parse_reference(text)
    assert (ref.registry, ref.repository, ref.tag, ref.digest) == (registry, repository, tag, digest)
    # Normalizing is idempotent: the full string parses back to the same reference.
    assert parse_reference(str(ref)) == ref
    assert parse_reference(ref.familiar) == ref


@pytest.mark.parametrize("text, why", [
    ("", "empty"),
    (":justtag", "missing"),
    (f"@sha256:{F64}", "missing"),
    (f"repo@sha256:{'f' * 63}", "64"),
    (f"repo@sha256:{'f' * 64}g", "digest"),
    (f"validname@invaliddigest:{F64}", "unsupported digest algorithm"),
    ("Uppercase:tag", "lower-case"),
    ("docker/Docker", "lower-case"),
    ("docker.io/docker/Docker", "lower-case"),
    ("test:5000/Uppercase/lowercase:tag", "lower-case"),
    ("a/" * 128 + "a:tag", "at most 255"),
    ("a" * 248, "at most 255"),
    ("aa/asdf$$^/aa", "lower-case letters"),
    ("https://github.com/docker/docker", "URL scheme"),
    ("-docker", "lower-case letters"),
    ("-docker/docker", "lower-case letters"),
    ("-docker.io/docker/docker", "lower-case letters"),
    ("docker///docker", "empty component"),
    ("docker.io/docker///docker", "empty component"),
    ("[fc00::1]:5000/docker///docker", "empty component"),
    ("1a3f5e7d9c1b3a5f7e9d1c3b5a7f9e1d3c5b7a9f1e3d5d7c9b1a3f5e7d9c1b3a", "image ID"),
    ("[2001:db8::1]", ""),
    ("[2001:db8::1]:5000", ""),
    ("[2001:db8::1]:tag", ""),
    ("[fe80::1%eth0]:5000/repo", ""),
    ("[fe80::1%@invalidzone]:5000/repo", ""),
    ("repo:-tag", "tag"),
    ("repo:" + "t" * 129, "tag"),
    ("repo/", "empty component"),
    (" busybox", "white space"),
])
def test_parse_invalid(text, why):
    with pytest.raises(InvalidReferenceError) as exc:
        parse_reference(text)
    msg = str(exc.value)
    assert repr(text)[:60].strip("'") in msg or text == ""
    assert why in msg


def test_max_length_name_is_accepted():
    text = "a/" * 127 + "a:tag-puts-this-over-max"
    ref = parse_reference(text)
    assert len(ref.repository) == 255


@pytest.mark.parametrize("text, familiar, full", [
    ("busybox", "busybox:latest", "docker.io/library/busybox:latest"),
    ("library/busybox:1", "busybox:1", "docker.io/library/busybox:1"),
    ("docker.io/user/app:v2", "user/app:v2", "docker.io/user/app:v2"),
    ("docker.io/library/a/b", "library/a/b:latest", "docker.io/library/a/b:latest"),
    ("localhost:5000/app", "localhost:5000/app:latest", "localhost:5000/app:latest"),
    (f"busybox@sha256:{F64}", f"busybox@sha256:{F64}", f"docker.io/library/busybox@sha256:{F64}"),
    (f"quay.io/a/b:t@sha256:{F64}", f"quay.io/a/b:t@sha256:{F64}", f"quay.io/a/b:t@sha256:{F64}"),
])
def test_familiar_and_full_forms(text, familiar, full):
    ref = parse_reference(text)
    assert ref.familiar == familiar
    assert str(ref) == full


def test_api_host_and_helpers():
    hub = parse_reference("busybox")
    assert hub.api_host == "registry-1.docker.io" and hub.is_docker_hub
    assert hub.identifier == "latest"
    local = parse_reference("localhost:5000/x/y:t")
    assert local.api_host == "localhost:5000" and not local.is_docker_hub
    pinned = local.with_digest(f"sha256:{F64}")
    assert pinned.identifier == f"sha256:{F64}"
    assert str(pinned.with_tag("v1")) == "localhost:5000/x/y:v1"
    assert str(local.repo_only()) == "localhost:5000/x/y"
    with pytest.raises(InvalidReferenceError, match="invalid tag"):
        local.with_tag(".bad")
    with pytest.raises(InvalidReferenceError, match="cannot pin"):
        local.with_digest("sha256:abc")


def test_default_tag_can_be_disabled():
    ref = parse_reference("busybox", default_tag=None)
    assert ref.tag is None and str(ref) == "docker.io/library/busybox"
    assert Reference("docker.io", "library/x").identifier == "latest"


def test_is_valid_tag():
    assert is_valid_tag("v1.2_3-rc")
    assert not is_valid_tag("")
    assert not is_valid_tag(".hidden")
    assert not is_valid_tag("a" * 129)


_ALPHABET = "abcAZ019._-:/@[]" + "sha256" + "f"


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=_ALPHABET, max_size=40) | st.from_regex(
    r"\A([a-z0-9.-]{1,10}(:[0-9]{1,5})?/)?[a-z0-9]{1,8}([._-][a-z0-9]{1,5})?(/[a-z0-9]{1,8}){0,2}(:[\w][\w.-]{0,10})?\Z"))
def test_any_text_parses_or_fails_cleanly(text):
    """Whatever the input, parsing raises InvalidReferenceError or gives a fixed point."""
    try:
        ref = parse_reference(text)
    except InvalidReferenceError as exc:
        assert repr(text)[1:-1][:30] in str(exc) or text == ""
        return
    assert parse_reference(str(ref)) == ref
    assert parse_reference(ref.familiar) == ref
    assert ref.tag or ref.digest
