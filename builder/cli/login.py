"""`pybuild login REGISTRY` and `pybuild logout REGISTRY`: manage stored registry credentials.

Credentials go where the docker CLI keeps them ($DOCKER_CONFIG/config.json or
~/.docker/config.json, or the credential helper that config names), so docker, podman and skopeo
share them. A login is verified against the registry's /v2/ endpoint before anything is saved.
"""
from __future__ import annotations

import argparse
import sys


def register(add_command) -> None:
    """Add the login and logout commands."""
    p = add_command("login", "log in to a registry (verified, then saved in the Docker config)")
    p.add_argument("registry", help="registry host, e.g. ghcr.io or localhost:5000 (default: docker.io)",
                   nargs="?", default="docker.io")
    p.add_argument("-u", "--username", help="user name (prompted for on a terminal if omitted)")
    p.add_argument("-p", "--password", help="the password or token (visible to other users in the "
                                            "process list: prefer --password-stdin)")
    p.add_argument("--password-stdin", action="store_true",
                   help="read the password or token from standard input")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST",
                   help="allow plain HTTP or an unverified certificate for HOST (repeatable)")
    p.set_defaults(func=_login)
    q = add_command("logout", "remove the stored credentials of a registry")
    q.add_argument("registry", nargs="?", default="docker.io", help="registry host (default: docker.io)")
    q.set_defaults(func=_logout)


def _login(args: argparse.Namespace) -> int:
    from registry.credentials import Credential, canonical_host, credential_override, save_credential
    from registry.client import ClientOptions, RegistryClient

    from ..errors import BuildError

    host = canonical_host(args.registry)
    if args.password is not None and args.password_stdin:
        raise BuildError(f"login to {host}: --password and --password-stdin are mutually exclusive")
    user = args.username
    if not user:
        if not sys.stdin.isatty() or args.password_stdin or args.password is not None:
            raise BuildError(f"login to {host}: give the user name with -u USER")
        user = input("Username: ").strip()
    if args.password is not None:
        print("WARNING! Using --password via the CLI is insecure. Use --password-stdin.", file=sys.stderr)
        password = args.password
    elif args.password_stdin:
        password = sys.stdin.read().rstrip("\r\n")
    elif sys.stdin.isatty():
        import getpass
        password = getpass.getpass("Password: ")
    else:
        raise BuildError(f"login to {host}: standard input is not a terminal; pipe the password "
                         f"with --password-stdin")
    if not password:
        raise BuildError(f"login to {host}: the password is empty")
    cred = Credential(user, password)
    # Verify first: an authenticated GET /v2/ runs the registry's whole auth flow (Basic, or a
    # token from its realm) with exactly this credential, whatever is stored already.
    with credential_override(host, cred), \
            RegistryClient(ClientOptions(insecure_registries=tuple(args.insecure_registry))) as client:
        resp = client.request(host, "GET", "/v2/", scopes=[], ok=(200,), what=f"login to {host}")
        authenticated = "Authorization" in resp.request.headers
        resp.close()
    path = save_credential(host, cred)
    if not args.quiet:
        if not authenticated:
            print(f"note: {host} did not ask for credentials; saved them anyway", file=sys.stderr)
        print(f"Login Succeeded (credentials for {user} on {host} saved in {path})")
    return 0


def _logout(args: argparse.Namespace) -> int:
    from registry.credentials import canonical_host, erase_credential

    host = canonical_host(args.registry)
    removed = erase_credential(host)
    if not args.quiet:
        print(f"Removed login credentials for {host}" if removed else f"Not logged in to {host}")
    return 0
