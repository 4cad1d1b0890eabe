"""USER and --chown resolution through the image's /etc/passwd and /etc/group, as Docker does."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import BuildError
from .rootview import RootView

# /etc/passwd and /etc/group come from the image: a bound keeps a hostile one (a huge or sparse
# file) from taking the builder's memory; real databases are a few kilobytes.
MAX_DB_BYTES = 16 << 20


@dataclass
class ResolvedUser:
    """Numeric identity for a process or for file ownership."""

    uid: int
    gid: int
    additional_gids: list[int] = field(default_factory=list)
    home: str = "/"


def _parse_db(text: str | None) -> list[list[str]]:
    if not text:
        return []
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(spec: str, view: RootView, for_chown: bool = False) -> ResolvedUser:
    """Resolve ``user[:group]`` (names or numbers) against the view's /etc/passwd and /etc/group.

    A numeric user missing from passwd gets gid 0 (Docker's rule); a name must exist. Without a
    group, the process gets the user's primary group plus its supplementary groups; ``--chown``
    with only a user uses gid = uid's primary group (or the uid itself when numeric-unknown).
    """
    spec = spec or "0"
    user, _, group = spec.partition(":")
    # Read through the view (overlay rules, links resolved inside the image), never the host.
    passwd = _parse_db(view.read_text("/etc/passwd", limit=MAX_DB_BYTES))
    groups = _parse_db(view.read_text("/etc/group", limit=MAX_DB_BYTES))
    uid: int | None = None
    gid: int | None = None
    name = ""
    home = "/"
    if user.isdigit():
        uid = int(user)
        for p in passwd:
            if len(p) >= 4 and p[2] == user:
                name, gid, home = p[0], _int(p[3]), p[5] if len(p) > 5 else "/"
                break
    else:
        for p in passwd:
            if len(p) >= 4 and p[0] == user:
                name, uid, gid, home = user, _int(p[2]), _int(p[3]), p[5] if len(p) > 5 else "/"
                break
        if uid is None:
            raise BuildError(f"unable to find user {user}: no matching entries in /etc/passwd of the image")
    if gid is None:
        gid = uid if for_chown else 0
    extra: list[int] = []
    if group:
        if group.isdigit():
            gid = int(group)
        else:
            for g in groups:
                if len(g) >= 3 and g[0] == group:
                    gid = _int(g[2])
                    break
            else:
                raise BuildError(f"unable to find group {group}: no matching entries in /etc/group of the image")
    elif name and not for_chown:
        for g in groups:
            if len(g) >= 4 and name in g[3].split(","):
                extra.append(_int(g[2]))
    return ResolvedUser(uid=uid, gid=gid, additional_gids=sorted(set(extra)), home=home)


def _int(s: str) -> int:
    try:
        return int(s)
    except ValueError:
        raise BuildError(f"malformed /etc/passwd or /etc/group entry: {s!r} is not a number") from None
