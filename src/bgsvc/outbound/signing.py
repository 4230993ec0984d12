"""Standard Webhooks signing: ``webhook-signature`` = ``v1,`` + base64 HMAC-SHA256 of
``id.timestamp.body``.

The ``standardwebhooks`` library does the HMAC (the spec authors' reference code, MIT, no
dependencies), so any Standard Webhooks receiver library verifies what we send. Only the
secret is read here, strictly: this module is light enough for bgsvc.config to validate with.
"""

from __future__ import annotations

import base64
import secrets
from datetime import UTC, datetime

from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"
MIN_SECRET_BYTES = 24  # the spec's lower bound for a secret key


def generate_secret() -> str:
    """A fresh secret in the spec's format: ``whsec_`` + base64 of 32 random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def decode_secret(secret: str) -> bytes:
    """The key bytes of a ``whsec_``-prefixed (or bare) base64 secret; ValueError when it is
    not strict base64 or shorter than 24 bytes. The library decodes leniently (it drops
    stray characters), so a typo would otherwise become a different key silently."""
    text = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError as exc:
        raise ValueError(f"the webhook secret is not base64 ({exc})") from exc
    if len(key) < MIN_SECRET_BYTES:
        raise ValueError(
            f"the webhook secret decodes to {len(key)} bytes; at least {MIN_SECRET_BYTES} "
            "are needed (docs/webhooks.md shows how to make one)"
        )
    return key


class WebhookSigner:
    """The three Standard Webhooks headers for a body."""

    def __init__(self, secret: str) -> None:
        self._webhook = Webhook(decode_secret(secret))

    def headers(self, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
        signature = self._webhook.sign(
            msg_id, datetime.fromtimestamp(timestamp, tz=UTC), body.decode("utf-8")
        )
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
        }
