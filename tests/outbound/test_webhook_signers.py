"""A delivery may be signed with a secret of its own (each API key's), instead of the
sender's."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from bgsvc.outbound.client import OutboundClient
from bgsvc.outbound.signing import WebhookSigner, generate_secret
from bgsvc.outbound.webhooks import JOB_SUCCEEDED, DeliveryResult, RetrySchedule, WebhookSender
from tests.outbound.conftest import run
from tests.outbound.servers import serve


def test_a_delivery_given_a_signer_is_signed_with_it_and_not_with_the_senders_own(
    make_client: Callable[..., OutboundClient],
) -> None:
    own, given = generate_secret(), generate_secret()

    async def scenario(url: str) -> DeliveryResult:
        async with make_client(allow="127.0.0.1") as client:
            sender = WebhookSender(client, WebhookSigner(own), RetrySchedule(attempts=1))
            return await sender.deliver(
                url, JOB_SUCCEEDED, {"id": "job_1"}, signer=WebhookSigner(given)
            )

    with serve({"/hook": lambda h: h.reply(204)}) as receiver:
        assert run(scenario(f"{receiver.base_url}/hook")).delivered
    [seen] = receiver.seen
    Webhook(given).verify(seen.body, seen.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(own).verify(seen.body, seen.headers)


def test_a_sender_without_a_secret_sends_nothing_unless_the_delivery_brings_a_signer(
    make_client: Callable[..., OutboundClient],
) -> None:
    async def scenario(url: str) -> None:
        async with make_client(allow="127.0.0.1") as client:
            sender = WebhookSender(client, None, RetrySchedule(attempts=1))
            await sender.deliver(url, JOB_SUCCEEDED, {"id": "job_1"})

    with (
        serve({"/hook": lambda h: h.reply(204)}) as receiver,
        pytest.raises(ValueError, match="no secret"),
    ):
        run(scenario(f"{receiver.base_url}/hook"))
    assert receiver.seen == []
