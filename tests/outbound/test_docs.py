"""The receiver snippet in docs/webhooks.md verifies what the service signs."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bgsvc.outbound.signing import WebhookSigner, generate_secret
from bgsvc.outbound.webhooks import JOB_SUCCEEDED, event_body, new_event_id

DOC = (Path(__file__).resolve().parents[2] / "docs" / "webhooks.md").read_text()


def _snippet_verify() -> Any:
    blocks = re.findall(r"```python\n(.*?)```", DOC, re.S)
    code = next(b for b in blocks if "def verify(" in b)
    namespace: dict[str, Any] = {}
    exec(compile(code, "docs/webhooks.md", "exec"), namespace)
    return namespace["verify"]


def test_the_documented_stdlib_receiver_accepts_a_real_delivery_and_nothing_else() -> None:
    verify = _snippet_verify()
    secret = generate_secret()
    body = event_body(JOB_SUCCEEDED, {"id": "job_1"}, datetime.now(tz=UTC))
    headers = WebhookSigner(secret).headers(new_event_id(), int(time.time()), body)
    assert verify(secret, body, {k.title(): v for k, v in headers.items()})["data"] == {
        "id": "job_1"
    }
    with pytest.raises(ValueError, match="no valid signature"):
        verify(secret, body + b" ", headers)
    with pytest.raises(ValueError, match="no valid signature"):
        verify(generate_secret(), body, headers)
    stale = WebhookSigner(secret).headers(new_event_id(), int(time.time()) - 3600, body)
    with pytest.raises(ValueError, match="tolerance"):
        verify(secret, body, stale)
