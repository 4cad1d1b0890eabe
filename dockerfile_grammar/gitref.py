"""Git source references for ``ADD <git-url>``: recognition and decomposition, like BuildKit.

A string is a git reference when it is ``http(s)://...`` whose path ends in ``.git``,
``git://...``, ``ssh://...``, scp-style ``user@host:path``, or the legacy bare ``github.com/...``.
``#ref[:subdir]`` and the query keys ``ref tag branch subdir checksum commit keep-git-dir
submodules mtime fetch-by-commit`` refine it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from .errors import DockerfileError

_PROTO = re.compile(r"^([a-zA-Z0-9]+)://")
_SCP = re.compile(r"^([a-zA-Z0-9-_]+)@([a-zA-Z0-9-.]+):(.*?)(?:\?(.*?))?(?:#(.*))?$", re.DOTALL)
_SUPPORTED = ("http", "https", "ssh", "git")
_FLAG_KEYS = ("submodules", "keep-git-dir", "fetch-by-commit")


@dataclass
class GitRef:
    """A decomposed git reference (field names follow BuildKit's GitRef)."""

    remote: str
    short_name: str
    ref: str = ""
    subdir: str = ""
    checksum: str = ""
    unencrypted_tcp: bool = False
    indistinguishable_from_local: bool = False
    keep_git_dir: bool | None = None
    submodules: bool | None = None
    mtime: str = ""
    fetch_by_commit: bool = False

    def fragment_format(self, with_subdir: bool = False) -> str:
        """Canonical ``remote#ref[:subdir]`` form."""
        out = self.remote
        sub = self.subdir.lstrip("/") if with_subdir else ""
        if self.ref or sub:
            out += "#" + self.ref
        if sub:
            out += ":" + sub
        return out


def parse_git_ref(src: str) -> GitRef | None:
    """Decompose ``src`` if it is a git reference, else return None.

    Raises DockerfileError when it is a git reference with an invalid query (unknown key,
    conflicting ref/tag/branch, bad mtime or boolean value).
    """
    if src.startswith(("./", "../")):
        return None
    indistinguishable = False
    unencrypted = False
    if src.startswith("github.com/"):
        indistinguishable = True
        rest, fragment = _cut(src, "#")
        remote, query = _cut(rest, "?")
    else:
        m = _PROTO.match(src)
        if m:
            scheme = m.group(1).lower()
            if scheme not in _SUPPORTED:
                return None
            rest, fragment = _cut(src, "#")
            remote, query = _cut(rest, "?")
            path = _url_path(remote[m.end():])
            unencrypted = scheme in ("http", "git")
            if scheme in ("http", "https") and not path.endswith(".git"):
                return None
        else:
            sm = _SCP.match(src)
            if sm is None:
                return None
            remote = f"{sm.group(1)}@{sm.group(2)}:{sm.group(3)}"
            query = sm.group(4) or ""
            fragment = sm.group(5) or ""
    ref, _, subdir = fragment.partition(":")
    short = remote.split("/")[-1]
    if short.endswith(".git"):
        short = short[:-4]
    g = GitRef(remote=remote, short_name=short, ref=ref, subdir=subdir, unencrypted_tcp=unencrypted,
               indistinguishable_from_local=indistinguishable)
    if query:
        _load_query(g, query, src)
    return g


def _cut(text: str, sep: str) -> tuple[str, str]:
    head, _, tail = text.partition(sep)
    return head, tail


def _url_path(after_scheme: str) -> str:
    # authority ends at the first "/"; the path is the rest
    slash = after_scheme.find("/")
    return unquote(after_scheme[slash:]) if slash >= 0 else ""


def _parse_bool(key: str, value: str, src: str) -> bool:
    if value in ("", "1", "t", "T", "TRUE", "true", "True"):
        return True
    if value in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise DockerfileError(f"invalid {key} value: {value!r} in git reference {src}")


def _load_query(g: GitRef, query: str, src: str) -> None:
    values: dict[str, list[str]] = {}
    for part in query.split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        values.setdefault(unquote(k.replace("+", " ")), []).append(unquote(v.replace("+", " ")))
    tag = branch = ""
    for key, vals in values.items():
        if len(vals) > 1:
            raise DockerfileError(f"query {key!r} has multiple values in git reference {src}")
        v = vals[0]
        if v == "" and key not in _FLAG_KEYS:
            raise DockerfileError(f"query {key!r} has no value in git reference {src}")
        if key == "ref":
            if g.ref and g.ref != v:
                raise DockerfileError(f"ref conflicts: {g.ref!r} vs {v!r} in git reference {src}")
            g.ref = v
        elif key == "tag":
            tag = v
        elif key == "branch":
            branch = v
        elif key == "subdir":
            if g.subdir and g.subdir != v:
                raise DockerfileError(f"subdir conflicts: {g.subdir!r} vs {v!r} in git reference {src}")
            g.subdir = v
        elif key in ("checksum", "commit"):
            g.checksum = v
        elif key == "keep-git-dir":
            g.keep_git_dir = _parse_bool(key, v, src)
        elif key == "submodules":
            g.submodules = _parse_bool(key, v, src)
        elif key == "fetch-by-commit":
            g.fetch_by_commit = _parse_bool(key, v, src)
        elif key == "mtime":
            if v not in ("commit", "checkout"):
                raise DockerfileError(f"invalid mtime value: {v!r} in git reference {src}",
                                      hint="use mtime=commit or mtime=checkout")
            g.mtime = v
        else:
            raise DockerfileError(f'unexpected query "{key}" in git reference {src}',
                                  hint="valid keys: ref, tag, branch, subdir, checksum, commit, "
                                       "keep-git-dir, submodules, mtime, fetch-by-commit")
    if tag:
        if not tag.startswith("refs/tags/"):
            tag = "refs/tags/" + tag
        if g.ref and g.ref != tag:
            raise DockerfileError(f"ref conflicts: {g.ref!r} vs {tag!r} in git reference {src}")
        g.ref = tag
    if branch:
        if tag:
            raise DockerfileError(f"branch conflicts with tag in git reference {src}")
        if not branch.startswith("refs/heads/"):
            branch = "refs/heads/" + branch
        if g.ref and g.ref != branch:
            raise DockerfileError(f"ref conflicts: {g.ref!r} vs {branch!r} in git reference {src}")
        g.ref = branch
