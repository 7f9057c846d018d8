"""The same produce/consume round trip against Kafka 3.9 and 4.x brokers.

The brokers' API version ranges differ (e.g. Produce 0-11 vs 3-13, Fetch 0-17 vs 4-18), and the
proxy intersects what it advertises with what it decodes; clients must work against either.
"""

from __future__ import annotations

import pytest

from testbed.clients import assert_round_trip, create_topic, driver, make_records, unique_name
from testbed.proxy import ProxyProcess

pytestmark = pytest.mark.integration

RECORDS = 1000


@pytest.fixture(params=["proxy", "kafka39_proxy"], ids=["kafka-4", "kafka-3.9"])
def any_version_proxy(request: pytest.FixtureRequest) -> ProxyProcess:
    """The tracing-off proxy in front of the 4.x broker, then the one in front of 3.9."""
    proxy: ProxyProcess = request.getfixturevalue(request.param)
    return proxy


@pytest.mark.parametrize("client", ["kafka-python", "confluent-kafka", "aiokafka", "java"])
def test_round_trip_on_each_broker_version(any_version_proxy: ProxyProcess, client: str) -> None:
    """Produce RECORDS records and consume them back unchanged, in a consumer group."""
    d = driver(client)
    topic = unique_name(f"versions-{client}")
    create_topic(any_version_proxy.bootstrap_servers, topic, 3)
    sent = make_records(RECORDS, binary=d.binary, seed=51, tag=client)
    d.produce(any_version_proxy.bootstrap_servers, topic, sent)
    received = d.consume(any_version_proxy.bootstrap_servers, topic, unique_name("group"), RECORDS)
    assert_round_trip(sent, received)
