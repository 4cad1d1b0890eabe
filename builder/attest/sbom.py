"""An SBOM of an image made by pybuild itself, from what the image's final filesystem says.

The scan reads the merged filesystem through a :class:`builder.runtime.rootview.RootView` (layer
directories, nothing mounted, no link of the image followed by the host) and finds:

- Debian packages: ``/var/lib/dpkg/status`` (installed paragraphs) and ``/var/lib/dpkg/status.d/*``
  (the one-file-per-package form of distroless images): name, version, source package, arch;
- Alpine packages: ``/lib/apk/db/installed``;
- Python distributions: ``*.dist-info/METADATA`` and ``*.egg-info/PKG-INFO`` (or an ``*.egg-info``
  file) in every ``site-packages`` / ``dist-packages`` directory;
- npm packages: ``node_modules/NAME/package.json`` and ``node_modules/@SCOPE/NAME/package.json``.

Everything is bounded, since the image may be hostile: each file read is capped in size, the
tree walk in entries and depth, the package list in count. What a cap cut short is reported
in the document (SPDX ``creationInfo.comment``, CycloneDX ``metadata.properties``), never
silently dropped. The output is deterministic: packages sorted, identifiers derived from
content, the timestamp SOURCE_DATE_EPOCH when it is set.
"""
from __future__ import annotations

import hashlib
import json
import re
import stat
import time
import uuid
from dataclasses import dataclass, field
from typing import Iterator
from urllib.parse import quote

from ..errors import BuildError

SPDX = "spdx"
CYCLONEDX = "cyclonedx"
FORMATS = (SPDX, CYCLONEDX)
PREDICATE_TYPES = {SPDX: "https://spdx.dev/Document", CYCLONEDX: "https://cyclonedx.org/bom"}


@dataclass(frozen=True)
class Limits:
    """Caps on what a scan reads (a hostile image can hold a 10 GB status file or a million
    package.json files)."""

    status_bytes: int = 64 << 20          # dpkg status, apk installed
    metadata_bytes: int = 1 << 20         # one METADATA / PKG-INFO / package.json / status.d file
    packages: int = 50_000
    walk_entries: int = 500_000           # names looked at while searching for Python and npm
    walk_depth: int = 48


@dataclass(frozen=True)
class Package:
    """One package the image holds."""

    type: str                  # deb, apk, pypi, npm
    name: str
    version: str
    purl: str
    arch: str = ""
    source: str = ""           # the source package (deb), origin (apk)
    license: str = ""
    location: str = ""         # where in the image it was found

    def sort_key(self) -> tuple:
        return (self.type, self.name, self.version, self.arch, self.location)


@dataclass
class ScanResult:
    packages: list[Package] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)   # what the limits cut short
    distro: tuple[str, str] = ("", "")                   # os-release ID, VERSION_ID


class _Scan:
    def __init__(self, view, limits: Limits):
        self.view = view
        self.limits = limits
        self.result = ScanResult()
        self._seen: set[tuple[str, str]] = set()

    def note(self, what: str) -> None:
        if what not in self.result.truncated:
            self.result.truncated.append(what)

    def add(self, pkg: Package) -> bool:
        """Add ``pkg``; False once the package cap is reached."""
        key = (pkg.purl, pkg.location)
        if key in self._seen:
            return True
        if len(self.result.packages) >= self.limits.packages:
            self.note(f"more than {self.limits.packages} packages: the rest are not listed")
            return False
        self._seen.add(key)
        self.result.packages.append(pkg)
        return True

    def read(self, path: str, limit: int) -> str | None:
        """The text of regular file ``path`` (links resolved inside the image); a file over
        ``limit`` is read only up to it (back to its last whole paragraph) and noted."""
        import os

        from ..runtime.rootview import open_beneath
        node = self.view._node(path)
        if node is None or not stat.S_ISREG(node.st.st_mode):
            return None
        size = node.st.st_size
        try:
            fd = open_beneath(node.layer, node.rel, os.O_RDONLY | os.O_NONBLOCK)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as f:
            now = os.fstat(f.fileno())
            if (now.st_dev, now.st_ino) != (node.st.st_dev, node.st.st_ino):
                return None
            data = f.read(min(size, limit))
        if size > limit:
            self.note(f"{path} is {size} bytes: only its first {limit} were read")
            cut = data.rfind(b"\n\n")
            data = data[:cut] if cut > 0 else data
        return data.decode(errors="replace")


# ---- os-release --------------------------------------------------------------------------------
def _os_release(scan: _Scan) -> tuple[str, str]:
    for p in ("/etc/os-release", "/usr/lib/os-release"):
        text = scan.read(p, 64 << 10)
        if text is None:
            continue
        vals = {}
        for line in text.splitlines():
            k, eq, v = line.partition("=")
            if eq:
                vals[k.strip()] = v.strip().strip('"').strip("'")
        return vals.get("ID", ""), vals.get("VERSION_ID", "")
    return "", ""


# ---- Debian --------------------------------------------------------------------------------------
def _paragraphs(text: str) -> Iterator[dict[str, str]]:
    """RFC-822-like paragraphs of a dpkg status file (continuation lines folded into the field)."""
    para: dict[str, str] = {}
    last = ""
    for line in text.splitlines():
        if not line.strip():
            if para:
                yield para
            para, last = {}, ""
            continue
        if line[0] in " \t":
            if last:
                para[last] += "\n" + line.strip()
            continue
        k, colon, v = line.partition(":")
        if colon:
            last = k.strip()
            para[last] = v.strip()
    if para:
        yield para


def _purl_version(v: str) -> str:
    return quote(v, safe=".+~-_")


def _deb(scan: _Scan, distro: tuple[str, str]) -> None:
    namespace = distro[0] if distro[0] in ("debian", "ubuntu") else "debian"
    files = ["/var/lib/dpkg/status"]
    names = scan.view.listdir("/var/lib/dpkg/status.d")
    if len(names) > scan.limits.packages:
        scan.note(f"/var/lib/dpkg/status.d has {len(names)} entries: only {scan.limits.packages} were read")
        names = names[: scan.limits.packages]
    files += ["/var/lib/dpkg/status.d/" + n for n in names if not n.endswith(".md5sums")]
    for path in files:
        text = scan.read(path, scan.limits.status_bytes if path == files[0] else scan.limits.metadata_bytes)
        if text is None:
            continue
        for para in _paragraphs(text):
            status = para.get("Status", "install ok installed" if path != files[0] else "")
            if not status.endswith(" installed") or not para.get("Package") or not para.get("Version"):
                continue
            name, version, arch = para["Package"], para["Version"], para.get("Architecture", "")
            src = para.get("Source", "")
            src_name, _, src_ver = src.partition(" ")
            src_ver = src_ver.strip("() ")
            q = []
            if arch:
                q.append("arch=" + quote(arch, safe=""))
            if distro[1]:
                q.append("distro=" + quote(f"{namespace}-{distro[1]}", safe=".-"))
            if src_name:
                q.append("upstream=" + quote(src_name + (f"@{src_ver}" if src_ver else ""), safe=".+~-_"))
            purl = f"pkg:deb/{namespace}/{quote(name, safe='.+-_')}@{_purl_version(version)}" + (
                "?" + "&".join(sorted(q)) if q else "")
            source = src_name + (f" ({src_ver})" if src_ver else "") if src_name else ""
            if not scan.add(Package("deb", name, version, purl, arch, source, "", path)):
                return


# ---- Alpine ----------------------------------------------------------------------------------------
def _apk(scan: _Scan, distro: tuple[str, str]) -> None:
    path = "/lib/apk/db/installed"
    text = scan.read(path, scan.limits.status_bytes)
    if text is None:
        return
    rec: dict[str, str] = {}

    def flush() -> bool:
        if rec.get("P") and rec.get("V"):
            q = []
            if rec.get("A"):
                q.append("arch=" + quote(rec["A"], safe=""))
            if distro[1]:
                q.append("distro=" + quote(distro[1], safe="."))
            purl = f"pkg:apk/alpine/{quote(rec['P'], safe='.+-_')}@{_purl_version(rec['V'])}" + (
                "?" + "&".join(sorted(q)) if q else "")
            return scan.add(Package("apk", rec["P"], rec["V"], purl, rec.get("A", ""), rec.get("o", ""),
                                    rec.get("L", ""), path))
        return True
    for line in text.splitlines():
        if not line.strip():
            if not flush():
                return
            rec = {}
            continue
        k, colon, v = line.partition(":")
        if colon and len(k) == 1 and k not in rec:
            rec[k] = v
    flush()


# ---- the tree walk for Python and npm ------------------------------------------------------------
def _walk_dirs(scan: _Scan) -> Iterator[tuple[str, object]]:
    """``(view path, node)`` of every directory of the image, iteratively, within the limits.

    Uses the view's nodes directly (RootView's own lookup rules), never the host's idea of a path.
    """
    view = scan.view
    root = view._node("/", follow=False)
    if root is None:
        return
    stack = [("", root, 0)]
    seen = 0
    while stack:
        vpath, node, depth = stack.pop()
        yield vpath or "/", node
        if vpath in ("/proc", "/sys", "/dev"):
            continue
        try:
            children = view._children(node)
        except OSError:
            continue
        seen += len(children)
        if seen > scan.limits.walk_entries:
            scan.note(f"the image has more than {scan.limits.walk_entries} names: the search for Python "
                      "and npm packages stopped there")
            return
        subdirs = [(vpath + "/" + name, child) for name, child in children if child.is_dir]
        if subdirs and depth + 1 > scan.limits.walk_depth:
            scan.note(f"directories deeper than {scan.limits.walk_depth} levels were not searched")
            continue
        for p, child in reversed(subdirs):
            stack.append((p, child, depth + 1))


def _headers(text: str) -> dict[str, str]:
    """The header block of a METADATA / PKG-INFO file (first value of each field)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break
        if line[0] in " \t":
            continue
        k, colon, v = line.partition(":")
        if colon:
            out.setdefault(k.strip().lower(), v.strip())
    return out


def _pypi_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _python(scan: _Scan, sp: str) -> bool:
    for entry in scan.view.listdir(sp):
        if entry.endswith(".dist-info"):
            meta = f"{sp}/{entry}/METADATA"
        elif entry.endswith(".egg-info"):
            meta = f"{sp}/{entry}/PKG-INFO" if scan.view.is_dir(f"{sp}/{entry}") else f"{sp}/{entry}"
        else:
            continue
        text = scan.read(meta, scan.limits.metadata_bytes)
        if text is None:
            continue
        h = _headers(text)
        name, version = h.get("name", ""), h.get("version", "")
        if not name or not version:
            continue
        purl = f"pkg:pypi/{quote(_pypi_name(name), safe='-')}@{_purl_version(version)}"
        lic = h.get("license-expression") or h.get("license", "")
        if not scan.add(Package("pypi", name, version, purl, license=lic if len(lic) < 200 else "",
                                location=meta)):
            return False
    return True


def _npm_one(scan: _Scan, pj: str) -> bool:
    text = scan.read(pj, scan.limits.metadata_bytes)
    if text is None:
        return True
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return True
    if not isinstance(doc, dict):
        return True
    name, version = doc.get("name"), doc.get("version")
    if not isinstance(name, str) or not isinstance(version, str) or not name or not version:
        return True
    if name.startswith("@") and "/" in name:
        scope, _, base = name.partition("/")
        purl_name = quote(scope, safe="") + "/" + quote(base, safe=".-_")
    else:
        purl_name = quote(name, safe=".-_")
    lic = doc.get("license")
    lic = lic if isinstance(lic, str) else ""
    return scan.add(Package("npm", name, version, f"pkg:npm/{purl_name}@{_purl_version(version)}",
                            license=lic, location=pj))


def _npm(scan: _Scan, nm: str) -> bool:
    for entry in scan.view.listdir(nm):
        if entry.startswith("."):
            continue
        if entry.startswith("@"):
            for sub in scan.view.listdir(f"{nm}/{entry}"):
                if not _npm_one(scan, f"{nm}/{entry}/{sub}/package.json"):
                    return False
        elif not _npm_one(scan, f"{nm}/{entry}/package.json"):
            return False
    return True


# ---- the scan ---------------------------------------------------------------------------------------
def scan_view(view, limits: Limits | None = None) -> ScanResult:
    """Every package the image in ``view`` (a RootView) holds; sorted, bounded."""
    scan = _Scan(view, limits or Limits())
    distro = _os_release(scan)
    scan.result.distro = distro
    _deb(scan, distro)
    _apk(scan, distro)
    for vpath, node in _walk_dirs(scan):
        base = vpath.rsplit("/", 1)[-1]
        if base in ("site-packages", "dist-packages"):
            if not _python(scan, vpath):
                break
        elif base == "node_modules":
            if not _npm(scan, vpath):
                break
    scan.result.packages.sort(key=Package.sort_key)
    return scan.result


# ---- documents ------------------------------------------------------------------------------------------
def _timestamp(source_date_epoch: int | None) -> str:
    t = source_date_epoch if source_date_epoch is not None else int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _content_id(name: str, result: ScanResult) -> str:
    h = hashlib.sha256(name.encode())
    for p in result.packages:
        h.update(b"\0" + p.purl.encode() + b"\0" + p.location.encode())
    return h.hexdigest()


_SPDX_ID = re.compile(r"[^A-Za-z0-9.-]+")
_LICENSE_EXPR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.+-]*( (AND|OR|WITH) [A-Za-z0-9][A-Za-z0-9.+-]*)*$")


def _tool() -> str:
    from .._version import __version__
    return f"pybuild-{__version__}"


def to_spdx(result: ScanResult, name: str, source_date_epoch: int | None = None) -> dict:
    """An SPDX 2.3 JSON document of ``result`` describing the image ``name``."""
    cid = _content_id(name, result)
    packages, rels, ids = [], [], set()
    for p in result.packages:
        base = _SPDX_ID.sub("-", f"SPDXRef-Package-{p.type}-{p.name}")
        sid = base + "-" + hashlib.sha256((p.purl + "\0" + p.location).encode()).hexdigest()[:16]
        while sid in ids:
            sid += "x"
        ids.add(sid)
        pkg = {"SPDXID": sid, "name": p.name, "versionInfo": p.version, "downloadLocation": "NOASSERTION",
               "filesAnalyzed": False, "licenseConcluded": "NOASSERTION",
               "licenseDeclared": p.license if _LICENSE_EXPR.match(p.license) else "NOASSERTION",
               "copyrightText": "NOASSERTION",
               "externalRefs": [{"referenceCategory": "PACKAGE-MANAGER", "referenceType": "purl",
                                 "referenceLocator": p.purl}]}
        if p.source:
            pkg["sourceInfo"] = f"source package: {p.source}"
        attrs = [f"type={p.type}", f"location={p.location}"] + ([f"arch={p.arch}"] if p.arch else [])
        pkg["comment"] = "; ".join(attrs)
        packages.append(pkg)
        rels.append({"spdxElementId": "SPDXRef-DOCUMENT", "relationshipType": "DESCRIBES",
                     "relatedSpdxElement": sid})
    info = {"created": _timestamp(source_date_epoch), "creators": [f"Tool: {_tool()}"]}
    comment = f"{len(packages)} packages found in the image's filesystem"
    if result.truncated:
        comment += "; TRUNCATED: " + "; ".join(result.truncated)
    info["comment"] = comment
    return {"spdxVersion": "SPDX-2.3", "dataLicense": "CC0-1.0", "SPDXID": "SPDXRef-DOCUMENT",
            "name": name, "documentNamespace": f"https://spdx.org/spdxdocs/pybuild-{cid}",
            "creationInfo": info, "packages": packages, "relationships": rels}


def to_cyclonedx(result: ScanResult, name: str, source_date_epoch: int | None = None) -> dict:
    """A CycloneDX 1.5 JSON document of ``result`` describing the image ``name``."""
    from .._version import __version__
    cid = _content_id(name, result)
    comps = []
    refs = set()
    for p in result.packages:
        ref = p.purl if p.purl not in refs else f"{p.purl}#{p.location}"
        refs.add(ref)
        c: dict = {"type": "library", "bom-ref": ref, "name": p.name, "version": p.version, "purl": p.purl}
        if p.license:
            c["licenses"] = ([{"expression": p.license}] if _LICENSE_EXPR.match(p.license)
                             else [{"license": {"name": p.license}}])
        props = [{"name": "pybuild:package:type", "value": p.type},
                 {"name": "pybuild:location", "value": p.location}]
        if p.arch:
            props.append({"name": "pybuild:arch", "value": p.arch})
        if p.source:
            props.append({"name": "pybuild:source-package", "value": p.source})
        c["properties"] = props
        comps.append(c)
    meta: dict = {"timestamp": _timestamp(source_date_epoch),
                  "tools": {"components": [{"type": "application", "name": "pybuild", "version": __version__}]},
                  "component": {"type": "container", "name": name, "bom-ref": "image"}}
    props = [{"name": "pybuild:packages", "value": str(len(comps))}]
    for t in result.truncated:
        props.append({"name": "pybuild:truncated", "value": t})
    meta["properties"] = props
    return {"bomFormat": "CycloneDX", "specVersion": "1.5",
            "serialNumber": "urn:uuid:" + str(uuid.UUID(cid[:32])),
            "version": 1, "metadata": meta, "components": comps}


def make_sbom(view, name: str, fmt: str = SPDX, source_date_epoch: int | None = None,
              limits: Limits | None = None) -> dict:
    """The SBOM document (``fmt`` spdx or cyclonedx) of the image in ``view``."""
    if fmt not in FORMATS:
        raise BuildError(f"SBOM format {fmt!r}: use one of {', '.join(FORMATS)}")
    result = scan_view(view, limits)
    return (to_spdx if fmt == SPDX else to_cyclonedx)(result, name, source_date_epoch)
