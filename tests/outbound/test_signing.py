from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from bgsvc.config import Settings
from bgsvc.outbound.signing import WebhookSigner, decode_secret, generate_secret

SECRET = generate_secret()


def test_the_signature_is_hmac_sha256_of_id_timestamp_body_by_an_independent_check() -> None:
    # The Standard Webhooks spec's own example.
    signer = WebhookSigner("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    body = b'{"test": 2432232314}'
    headers = signer.headers("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    mac = hmac.new(key, b"msg_p5jXN8AQM9LWM0D4loKWxJek.1614265330." + body, hashlib.sha256)
    assert headers["webhook-signature"] == "v1," + base64.b64encode(mac.digest()).decode()
    assert headers["webhook-signature"] == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    assert headers["webhook-timestamp"] == "1614265330"


def test_the_webhook_secret_setting_must_be_strict_base64_of_24_bytes_or_more() -> None:
    assert len(decode_secret(SECRET)) == 32
    assert Settings(webhook_secret=SECRET).webhook_secret.get_secret_value() == SECRET
    assert SECRET not in repr(Settings(webhook_secret=SECRET))
    for bad in ("whsec_not base64!", "whsec_" + base64.b64encode(b"short").decode()):
        with pytest.raises(ValueError, match="webhook secret"):
            Settings(webhook_secret=bad)
