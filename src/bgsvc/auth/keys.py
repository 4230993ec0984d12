"""A key's secrets: the API secret and its keyed digest, checking a presented secret,
and the webhook signing secret derived for each key."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING

from bgsvc.outbound.signing import SECRET_PREFIX as WEBHOOK_SECRET_PREFIX

if TYPE_CHECKING:
    # Types only: base imports this module for the webhook secret a record derives.
    from bgsvc.auth.base import ApiKey, KeyStore

SECRET_PREFIX = "bgsvc_"
# 32 random bytes: 256 bits, far beyond guessing; urlsafe so it survives headers and shells.
SECRET_BYTES = 32
# The salt a key's webhook secret is derived from: unique per key and per rotation, which is
# all it needs to be; the pepper supplies the secrecy.
WEBHOOK_SALT_BYTES = 16


def new_secret() -> str:
    """A fresh secret; shown once by ``bgsvc keys create`` and never stored."""
    return SECRET_PREFIX + secrets.token_urlsafe(SECRET_BYTES)


def digest_of(secret: str, pepper: str) -> str:
    """HMAC-SHA256 of the secret under the server's pepper: a stolen store alone gives
    nothing to replay, and nothing to brute-force without the pepper."""
    return hmac.new(pepper.encode(), secret.encode(), hashlib.sha256).hexdigest()


def new_webhook_salt() -> str:
    return secrets.token_hex(WEBHOOK_SALT_BYTES)


def webhook_secret_of(salt: str, pepper: str) -> str:
    """``whsec_`` + base64 of HMAC-SHA256(pepper, "webhook:" + salt): 32 bytes in the
    Standard Webhooks format. Derived, never stored: the store holds only the salt, which
    without the pepper reveals nothing. The "webhook:" prefix keeps these MACs apart from
    the digests of API secrets, made under the same pepper."""
    mac = hmac.new(pepper.encode(), f"webhook:{salt}".encode(), hashlib.sha256).digest()
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(mac).decode("ascii")


def rotate_webhook_secret(store: KeyStore, name: str, pepper: str) -> str:
    """Give the key a fresh salt and return its new webhook secret (KeyNotFound when
    unknown); the old secret signs nothing more once the service's cache of it expires."""
    salt = new_webhook_salt()
    store.set_webhook_salt(name, salt)
    return webhook_secret_of(salt, pepper)


def verify(store: KeyStore, secret: str, pepper: str) -> ApiKey | None:
    """The key this secret belongs to, or None."""
    digest = digest_of(secret, pepper)
    key = store.by_digest(digest)
    # The lookup is by digest already; comparing the digests again in constant time keeps
    # the decision itself free of timing that depends on the stored value.
    if key is None or not hmac.compare_digest(key.digest, digest):
        return None
    return key
