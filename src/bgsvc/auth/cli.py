"""`bgsvc keys create|list|revoke|webhook-secret`, against the store the service uses."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime

from bgsvc.auth.base import (
    SCOPES,
    ApiKey,
    KeyExists,
    KeyNotFound,
    check_name,
    parse_quota,
    parse_scopes,
)
from bgsvc.auth.factory import open_store
from bgsvc.auth.keys import (
    digest_of,
    new_secret,
    new_webhook_salt,
    rotate_webhook_secret,
    webhook_secret_of,
)
from bgsvc.config import Settings
from bgsvc.limits.base import RatePolicy


def _pepper(settings: Settings) -> str:
    pepper = settings.auth_pepper.get_secret_value()
    if not pepper:
        raise SystemExit("bgsvc: error: BGSVC_AUTH_PEPPER is not set (the service's, too)")
    return pepper


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "-"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M")


def _create(args: argparse.Namespace, settings: Settings) -> int:
    try:
        name = check_name(args.name)
        scopes = parse_scopes(args.scopes)
        if args.rate is not None:
            RatePolicy.parse(args.rate, args.burst)
        elif args.burst is not None:
            raise ValueError("--burst needs --rate")
        quota = None if args.quota is None else parse_quota(args.quota)
    except ValueError as exc:
        print(f"bgsvc: error: {exc}", file=sys.stderr)
        return 2
    secret = new_secret()
    pepper = _pepper(settings)
    salt = new_webhook_salt()
    key = ApiKey(
        name=name,
        digest=digest_of(secret, pepper),
        scopes=scopes,
        rate=args.rate,
        burst=args.burst,
        quota=quota,
        webhook_salt=salt,
    )
    store = open_store(settings)
    try:
        store.add(key)
    except KeyExists as exc:
        print(f"bgsvc: error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    # stdout carries the secret alone (SECRET=$(bgsvc keys create NAME)); the rest is stderr,
    # the webhook secret included: scripts that want it on stdout use `keys webhook-secret`.
    print(secret)
    print(
        f"created key {name!r} (scopes {','.join(sorted(scopes))}, rate {args.rate or '-'}, "
        f"quota {quota or '-'}/month); the secret above is shown only now\n"
        f"webhook signing secret: {webhook_secret_of(salt, pepper)}\n"
        "(its webhooks are signed with it; shown only now, `bgsvc keys webhook-secret "
        f"{name}` replaces it)",
        file=sys.stderr,
    )
    return 0


def _webhook_secret(args: argparse.Namespace, settings: Settings) -> int:
    pepper = _pepper(settings)
    store = open_store(settings)
    try:
        secret = rotate_webhook_secret(store, args.name, pepper)
    except KeyNotFound as exc:
        print(f"bgsvc: error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(secret)
    print(
        f"new webhook signing secret of key {args.name!r}, shown only now; the service "
        "signs with it within seconds, and the previous one stops verifying",
        file=sys.stderr,
    )
    return 0


def _list(_: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    try:
        keys = store.all()
    finally:
        store.close()
    rows = [("NAME", "SCOPES", "RATE", "BURST", "QUOTA", "CREATED", "REVOKED")]
    for key in keys:
        rows.append(
            (
                key.name,
                ",".join(sorted(key.scopes)),
                key.rate or "-",
                "-" if key.burst is None else str(key.burst),
                "-" if key.quota is None else f"{key.quota}/month",
                _when(key.created_at),
                _when(key.revoked_at),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    return 0


def _revoke(args: argparse.Namespace, settings: Settings) -> int:
    store = open_store(settings)
    try:
        key = store.revoke(args.name, time.time())
    except KeyNotFound as exc:
        print(f"bgsvc: error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"revoked key {key.name!r} at {_when(key.revoked_at)} UTC", file=sys.stderr)
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """``bgsvc keys ...`` under the main parser's subcommands."""
    keys = sub.add_parser(
        "keys",
        help="create, list or revoke API keys, or rotate their webhook secrets",
        description="Keys live in Redis when BGSVC_REDIS_URL is set, else in "
        "BGSVC_DATA_DIR/keys.sqlite3; BGSVC_AUTH_PEPPER must be the service's.",
    )
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser(
        "create", help="make a key; prints its secret (stdout) and webhook secret (stderr) once"
    )
    create.add_argument("name")
    create.add_argument("--rate", default=None, help="e.g. 60/min, 10/s, 1000/hour")
    create.add_argument("--burst", type=int, default=None, help="requests at once (default: rate)")
    create.add_argument("--quota", default=None, help="credits per month, e.g. 10000/month")
    create.add_argument(
        "--scopes", default=",".join(sorted(SCOPES)), help="remove, jobs or both (default)"
    )
    create.set_defaults(func=_create)
    listing = keys_sub.add_parser("list", help="every key, revoked ones included")
    listing.set_defaults(func=_list)
    revoke = keys_sub.add_parser("revoke", help="refuse a key from now on, on every node")
    revoke.add_argument("name")
    revoke.set_defaults(func=_revoke)
    webhook = keys_sub.add_parser(
        "webhook-secret",
        help="give a key a new webhook signing secret; prints it once (the old one stops)",
    )
    webhook.add_argument("name")
    webhook.set_defaults(func=_webhook_secret)
