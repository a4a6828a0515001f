"""key.expiring and key.expired come from the running service's scan, once each, however often it runs."""

from __future__ import annotations

from keystile.clock import FakeClock
from tests.conftest import MakeClient
from tests.events.helpers import add_webhook, delivering_client
from tests.events.receiver import Receiver
from tests.helpers import create_key, user_headers


async def test_a_key_near_its_expiry_is_announced_once_and_again_once_when_it_expires(
    make_client: MakeClient, clock: FakeClock
) -> None:
    with Receiver() as receiver:
        client = await delivering_client(make_client, expiry_warning_seconds=3600)
        headers = await user_headers(client)
        await add_webhook(client, headers, receiver.url, ["key.expiring", "key.expired"])
        key = await create_key(client, headers, expires_in=7200)
        scan = client.keystile.events.expiry

        before_window = await scan.scan()
        clock.advance(3601)
        warned = [await scan.scan(), await scan.scan()]
        clock.advance(3600)
        expired = [await scan.scan(), await scan.scan()]
        client.keystile.events.dispatcher.wake()
        first, second = await receiver.received(2)

        assert before_window == 0
        assert warned == [1, 0]
        assert expired == [1, 0]
        assert sorted([first.json["type"], second.json["type"]]) == ["key.expired", "key.expiring"]
        assert {first.json["data"]["id"], second.json["data"]["id"]} == {key["id"]}
