"""Supply-chain commands: `attestations` (list and print what is attached to an image),
`generate-key-pair`, `sign` and `verify` (cosign-format signatures in a registry).

    pybuild attestations REF [--type sbom|provenance|signature|URI] [--format json] [--remote]
    pybuild generate-key-pair [--output-key-prefix cosign]     # COSIGN_PASSWORD: the key's password
    pybuild sign --key cosign.key REGISTRY/REPO:TAG
    pybuild verify --key cosign.pub REGISTRY/REPO:TAG
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

# --type shorthands for the predicate types pybuild writes.
TYPE_ALIASES = {
    "sbom": ("https://spdx.dev/Document", "https://cyclonedx.org/bom"),
    "spdx": ("https://spdx.dev/Document",),
    "cyclonedx": ("https://cyclonedx.org/bom",),
    "provenance": ("https://slsa.dev/provenance/v1", "https://slsa.dev/provenance/v0.2"),
}


def _registry_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST",
                   help="allow plain HTTP or an unverified certificate for HOST (repeatable)")


def register(add_command) -> None:
    """Add the supply-chain commands."""
    p = add_command("attestations", "list (or print) the attestations and signatures attached to an image")
    p.add_argument("ref", metavar="REF", help="image in the local store, else in its registry")
    p.add_argument("--type", dest="type", metavar="TYPE",
                   help="print the documents of this type: sbom, spdx, cyclonedx, provenance, signature, "
                        "or a predicate type URI")
    p.add_argument("--format", choices=("text", "json"), default="text", help="listing format (default: text)")
    p.add_argument("--remote", action="store_true", help="ask the registry even if the store has the image")
    _registry_options(p)
    p.set_defaults(func=_attestations)

    p = add_command("generate-key-pair", "write a cosign-compatible ECDSA P-256 key pair (cosign.key, cosign.pub)")
    p.add_argument("--output-key-prefix", default="cosign", metavar="PREFIX",
                   help="write PREFIX.key and PREFIX.pub (default: cosign); the password is COSIGN_PASSWORD")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=_generate)

    p = _keyed_command(add_command, "sign", "sign an image in a registry with a cosign key (the sha256-<digest>.sig tag)",
                       _sign, key_metavar="KEY", key_help="cosign private key file (password: COSIGN_PASSWORD)",
                       ref_help="image in a registry (a tag is signed as the digest it names now)")
    p.add_argument("--recursive", action="store_true",
                   help="an index: sign each platform image too (what podman and skopeo look for when they pull one)")

    p = _keyed_command(add_command, "verify", "check an image's cosign signature against a public key (exit 1 if none verifies)",
                       _verify, key_metavar="PUB", key_help="cosign public key file (PEM)", ref_help="image in a registry")
    p.add_argument("--identity", metavar="REPO",
                   help="also require the signature to name this repository (its docker-reference)")


def _keyed_command(add_command, name: str, summary: str, func: Any, *, key_metavar: str, key_help: str,
                   ref_help: str) -> argparse.ArgumentParser:
    """A command on an image in a registry with a cosign key file (sign, verify): --key, REF and
    the registry options; the caller adds the command's own flags."""
    p = add_command(name, summary)
    p.add_argument("--key", required=True, metavar=key_metavar, help=key_help)
    p.add_argument("ref", metavar="REF", help=ref_help)
    _registry_options(p)
    p.set_defaults(func=func)
    return p


def _client(args: argparse.Namespace) -> Any:
    from registry.client import ClientOptions, RegistryClient
    return RegistryClient(ClientOptions(insecure_registries=tuple(args.insecure_registry)))


def _find(args: argparse.Namespace) -> tuple[str, str, list]:
    """(where: local|remote, resolved digest, attachments) of ``args.ref``."""
    from builder.attest.discover import discover_local, discover_remote
    from registry.errors import NotFoundError
    if not args.remote:
        from registry.store import open_store
        try:
            digest, found = discover_local(open_store(args.root), args.ref)
            return "local", digest, found
        except NotFoundError:
            pass
    with _client(args) as client:
        digest, found = discover_remote(client, args.ref)
    return "remote", digest, found


def _matches(entry: Any, kind: str, want: str) -> bool:
    if want == "signature":
        return kind == "signature"
    return entry.predicate_type in TYPE_ALIASES.get(want, (want,))


def _attestations(args: argparse.Namespace) -> int:
    where, digest, found = _find(args)
    if args.type:
        matching = [e for a in found for e in a.entries if _matches(e, a.kind, args.type)]
        docs = [e.content for e in matching if e.content is not None]
        if not docs:
            from builder.errors import BuildError
            if matching:
                raise BuildError(f"{args.ref} ({where}, {digest}): {len(matching)} {args.type} document(s) attached, "
                                 "none usable: " + "; ".join(sorted({e.problem or 'not read' for e in matching})))
            have = sorted({e.predicate_type or a.kind for a in found for e in a.entries})
            raise BuildError(f"{args.ref} ({where}, {digest}): no {args.type} attached"
                             + (f"; it has: {', '.join(have)}" if have else "; nothing is attached"))
        for doc in docs:
            print(json.dumps(doc, indent=2, sort_keys=True))
        return 0
    if args.format == "json":
        print(json.dumps({"reference": args.ref, "source": where, "digest": digest,
                          "attachments": [a.to_dict() for a in found]}, indent=2))
        return 0
    from .format import print_table, printable
    print(printable(f"{args.ref} ({where}): {digest}"))
    if not found:
        print("nothing attached")
        return 0
    rows = [("KIND", "TYPE", "SUBJECT", "MANIFEST", "FOUND BY")]
    for a in found:
        for e in a.entries or [None]:
            what = (e.predicate_type or e.media_type) if e is not None else a.artifact_type
            if e is not None and e.problem:
                what += f" (set aside: {e.problem})"
            rows.append((a.kind, what, a.subject[:19], a.manifest[:19], ", ".join(a.found_by)))
    print_table(rows)
    return 0


def _generate(args: argparse.Namespace) -> int:
    import os
    from builder.attest.keys import generate_key_pair, password_for_new_key
    from builder.errors import BuildError
    from registry.fsutil import atomic_write
    key_path, pub_path = f"{args.output_key_prefix}.key", f"{args.output_key_prefix}.pub"
    for path in (key_path, pub_path):
        if os.path.lexists(path) and not args.force:
            raise BuildError(f"{path} exists: remove it, pick another --output-key-prefix or pass --force")
    pair = generate_key_pair(password_for_new_key())
    # atomic_write: a new randomly named O_EXCL|O_NOFOLLOW file renamed over the name, so a
    # planted symlink (at the name or a guessable temporary one) is replaced, never written through.
    atomic_write(key_path, pair.private_pem, 0o600)
    atomic_write(pub_path, pair.public_pem, 0o644)
    print(f"Private key written to {key_path}\nPublic key written to {pub_path}", file=sys.stderr)
    return 0


def _sign(args: argparse.Namespace) -> int:
    from builder.attest.keys import load_private_key
    from builder.attest.sign import sign
    key = load_private_key(args.key)
    with _client(args) as client:
        done = sign(client, args.ref, key, recursive=args.recursive)
    for res in done:
        print(f"{res.reference}: signature in :{res.tag} ({res.manifest})", file=sys.stderr)
        print(res.reference)
    return 0


def _verify(args: argparse.Namespace) -> int:
    from builder.attest.keys import load_public_key
    from builder.attest.sign import signed_identities, verify
    from registry.reference import parse_reference
    key = load_public_key(args.key)
    with _client(args) as client:
        good = verify(client, args.ref, key, identity=args.identity)
    r = parse_reference(args.ref)
    names = signed_identities(good)
    print(f"Verification for {args.ref} ({good[0].digest}): {len(good)} valid signature(s) by {args.key}, "
          f"signed for {', '.join(names)}", file=sys.stderr)
    here = f"{r.registry}/{r.repository}"
    if args.identity is None and any(n != here for n in names):
        # cosign's rule (the digest binds) lets a signature made for one repository verify in
        # another; say so rather than let it pass unnoticed (podman's default policy refuses it).
        print(f"note: the signature names another repository than {here}; pass --identity {here} to "
              "require it", file=sys.stderr)
    for v in good:
        print(json.dumps(v.payload, sort_keys=True))
    return 0
