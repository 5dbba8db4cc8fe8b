"""API keys with scopes, the same on both transports.

    read    Embed, EmbedStream, Lookup, Search, Info, ListCollections (and their HTTP routes)
    write   Upsert, Delete
    admin   CreateCollection, DropCollection

A key is `tsk_<id>_<secret>`: the id names it (for revoking, and in the file), the secret is 256
random bits. The file keeps, per key, its id, scopes, a random salt and sha256(salt + secret) —
never the key itself. A fast hash is enough because the secret is random, not a password: nothing
smaller than 2^256 guesses finds it. Checking is constant-time, and an unknown id is checked
against a dummy entry, so an answer never tells whether a key exists. Keys are never logged.

    python -m runtime keys add --file keys.json --scopes read,write   # prints the new key, once
    python -m runtime keys revoke --file keys.json ID
    python -m runtime keys list --file keys.json

The server reads the file at start and again on SIGHUP.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from runtime.errors import PermissionDenied, StartError, Unauthenticated

SCOPES = ("read", "write", "admin")
PREFIX = "tsk_"
SCOPE_OF = {  # the API's methods (gRPC's names; the HTTP routes map onto them)
    "Embed": "read", "EmbedStream": "read", "Lookup": "read", "Search": "read", "Info": "read",
    "Count": "read", "Get": "read", "ListRecords": "read", "ListCollections": "read",
    "Upsert": "write", "Delete": "write",
    "CreateCollection": "admin", "DropCollection": "admin", "Media": "read",
}  # fmt: skip


@dataclass(frozen=True)
class KeyEntry:
    id: str
    scopes: list[str]
    salt: str  # hex
    digest: str  # hex sha256(salt + secret)
    created: float
    name: str = ""


def _digest(salt: bytes, secret: str) -> str:
    return hashlib.sha256(salt + secret.encode()).hexdigest()


def new_key(scopes: list[str], name: str = "") -> tuple[str, KeyEntry]:
    """A fresh key (shown once) and the entry the file keeps for it."""
    bad = [s for s in scopes if s not in SCOPES]
    if bad or not scopes:
        raise ValueError(f"scopes must be some of {', '.join(SCOPES)}, got {scopes}")
    key_id, secret, salt = secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_bytes(16)
    return f"{PREFIX}{key_id}_{secret}", KeyEntry(
        key_id, sorted(scopes), salt.hex(), _digest(salt, secret), time.time(), name
    )


class KeyFile:
    """The keys of a file; `check` answers which scopes a presented key has."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, KeyEntry] = {}
        self._dummy = KeyEntry("", [], secrets.token_hex(16), secrets.token_hex(32), 0.0)
        self.reload()

    def reload(self) -> int:
        """Reads the file again (a missing or damaged file is a StartError naming it); returns how many."""
        try:
            data = json.loads(self.path.read_text())
            self.entries = {e["id"]: KeyEntry(**e) for e in data["keys"]}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StartError(f"--api-keys {self.path}: unreadable key file ({type(e).__name__}: {e})") from e
        return len(self.entries)

    def check(self, presented: str | None, scope: str) -> None:
        """Raises Unauthenticated (no key, or not valid) or PermissionDenied (valid, wrong scope)."""
        if not presented:
            raise Unauthenticated("an API key is required (authorization: Bearer <key>)")
        key_id, _, secret = presented.removeprefix(PREFIX).partition("_")
        entry = self.entries.get(key_id, self._dummy)
        valid = hmac.compare_digest(_digest(bytes.fromhex(entry.salt), secret), entry.digest)
        if not valid or entry is self._dummy or not presented.startswith(PREFIX):
            raise Unauthenticated("invalid API key")
        if scope not in entry.scopes:
            raise PermissionDenied(f"this key lacks the {scope!r} scope")


def client_of_key(presented: str | None) -> str:
    """Whom a checked key stands for in admission's per-client history: its id, never its secret.
    "" where there is no key."""
    return "key " + presented.removeprefix(PREFIX).partition("_")[0] if presented else ""


def bearer(header: str | None) -> str | None:
    """The key in an `authorization: Bearer <key>` value (or a bare key)."""
    if not header:
        return None
    kind, _, value = header.partition(" ")
    return value.strip() if kind.lower() == "bearer" else header.strip()


def save(path: Path, entries: list[KeyEntry]) -> None:
    """Writes the file atomically, readable by its owner only."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"keys": [asdict(e) for e in entries]}, indent=2))
    tmp.chmod(0o600)
    os.replace(tmp, path)


def main(argv: list[str]) -> int:
    """`python -m runtime keys add|revoke|list --file F ...`."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m runtime keys", description="manage API keys")
    sub = parser.add_subparsers(dest="action", required=True)
    for action in ("add", "revoke", "list"):
        p = sub.add_parser(action)
        p.add_argument("--file", type=Path, required=True)
        if action == "add":
            p.add_argument("--scopes", default="read", help=f"comma-separated: {', '.join(SCOPES)}")
            p.add_argument("--name", default="", help="a note (who or what uses it)")
        if action == "revoke":
            p.add_argument("id")
    args = parser.parse_args(argv)
    entries = list(KeyFile(args.file).entries.values()) if args.file.exists() else []
    if args.action == "add":
        key, entry = new_key([s.strip() for s in args.scopes.split(",") if s.strip()], args.name)
        save(args.file, [*entries, entry])
        print(key)  # shown this once; the file keeps only its hash
    elif args.action == "revoke":
        kept = [e for e in entries if e.id != args.id]
        if len(kept) == len(entries):
            print(f"error: no key {args.id!r} in {args.file}")
            return 1
        save(args.file, kept)
    else:
        for e in entries:
            print(
                f"{e.id}\t{','.join(e.scopes)}\t{time.strftime('%Y-%m-%d', time.gmtime(e.created))}\t{e.name}"
            )
    return 0
