"""A Kafka client session against one broker, with kafka-python (Debian `python3-kafka`).

Usage: kafka_client.py HOST:PORT TOPIC

Creates TOPIC (one partition), produces one record to it (acks=1) and reads it back, then fails
on purpose: it creates TOPIC again (CreateTopics answers TOPIC_ALREADY_EXISTS). Prints one line
per step: `<step> ok|<error class>`.
"""

import sys

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError

broker, topic = sys.argv[1], sys.argv[2]
timeouts = dict(request_timeout_ms=5000, api_version_auto_timeout_ms=5000)


def step(name, fn):
    try:
        fn()
        print(name, "ok", flush=True)
    except KafkaError as e:
        print(name, type(e).__name__, flush=True)


admin = KafkaAdminClient(bootstrap_servers=broker, client_id="clv-admin", **timeouts)
step("create", lambda: admin.create_topics([NewTopic(topic, 1, 1)]))

producer = KafkaProducer(
    bootstrap_servers=broker, client_id="clv-producer", acks=1, retries=0, max_block_ms=5000,
    **timeouts)
step("produce", lambda: producer.send(topic, b"order-1").get(timeout=5))
producer.close()

consumer = KafkaConsumer(
    bootstrap_servers=broker, client_id="clv-consumer", group_id=None,
    auto_offset_reset="earliest", consumer_timeout_ms=3000, **timeouts)
partition = TopicPartition(topic, 0)
consumer.assign([partition])


def read_back():
    for record in consumer:
        if record.value == b"order-1":
            return
    raise KafkaError("record not read back")


step("fetch", read_back)
consumer.close()

step("create-again", lambda: admin.create_topics([NewTopic(topic, 1, 1)]))
admin.close()

