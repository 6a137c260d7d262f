"""The S3 archive read by an independent Avro reader (fastavro) through the S3 API (boto3).

scripts/test runs an archiver on this suite's topic, writing to its own bucket. Every event the
producer appended must be in exactly one archive file, under the contract's key layout, equal to
what Confluent's AvroDeserializer decodes from the topic.
"""
import io
import json
import os
import re
import time
import urllib.request
import uuid

import boto3
import fastavro
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

REGISTRY = os.environ["FOLDLINE_REGISTRY_URL"]
BROKERS = os.environ["FOLDLINE_BROKERS"]
PRODUCER = os.environ["FOLDLINE_PRODUCER_URL"]
# An admin token minted by scripts/test with the producer's secret.
TOKEN = os.environ["FOLDLINE_TEST_TOKEN"]
TOPIC = os.environ["FOLDLINE_TEST_TOPIC"]
BUCKET = os.environ["FOLDLINE_TEST_BUCKET"]
S3_URL = os.environ["FOLDLINE_TEST_S3_URL"]
KEY = re.compile(r"^products/dt=(\d{4}-\d{2}-\d{2})/partition=(\d+)/(\d{20})-(\d{20})\.avro$")


def post(path, body):
    request = urllib.request.Request(f"{PRODUCER}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request) as response:
        return json.load(response)


def topic_events():
    """(partition, offset) -> the event as Confluent's deserializer decodes it."""
    deserializer = AvroDeserializer(SchemaRegistryClient({"url": REGISTRY}))
    consumer = Consumer({"bootstrap.servers": BROKERS, "group.id": f"py-{uuid.uuid4().hex}",
                         "isolation.level": "read_committed", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    partitions = list(consumer.list_topics(TOPIC, timeout=10).topics[TOPIC].partitions)
    consumer.assign([TopicPartition(TOPIC, p, 0) for p in partitions])
    events, at_end = {}, set()
    deadline = time.time() + 60
    while len(at_end) < len(partitions) and time.time() < deadline:
        message = consumer.poll(0.5)
        if message is None:
            continue
        if message.error():
            if message.error().code() == -191:  # _PARTITION_EOF
                at_end.add(message.partition())
            continue
        value = deserializer(message.value(), SerializationContext(TOPIC, MessageField.VALUE))
        events[(message.partition(), message.offset())] = value
    consumer.close()
    return events


def archived(s3):
    """(partition, offset) -> [(key, archived record)], and the keys."""
    found, keys = {}, []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix="products/"):
        for obj in page.get("Contents", []):
            keys.append(obj["Key"])
    for key in keys:
        body = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        reader = fastavro.reader(io.BytesIO(body))
        assert reader.codec == "deflate"
        assert reader.writer_schema["fields"][-1]["type"]["name"] == "io.foldline.products.ProductEvent"
        for record in reader:
            found.setdefault((record["partition"], record["offset"]), []).append((key, record))
    return found, keys


def test_every_event_is_in_exactly_one_archive_file_that_fastavro_reads():
    ids = [post("/products", {"name": f"Archived {i}", "price_cents": 100 + i, "stock": 4,
                              "seller_id": "s-archive"})["id"] for i in range(12)]
    for product_id in ids[:6]:
        post(f"/products/{product_id}/stock", {"delta": -1, "reason": "sold"})
    expected = topic_events()
    assert len(expected) >= 18

    s3 = boto3.client("s3", endpoint_url=S3_URL, region_name="us-east-1",
                      aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "foldline"),
                      aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "foldline-secret"))
    deadline = time.time() + 60
    while True:
        try:
            found, keys = archived(s3)
        except s3.exceptions.NoSuchBucket:
            found, keys = {}, []
        if set(expected) <= set(found) or time.time() > deadline:
            break
        time.sleep(0.5)

    assert set(found) == set(expected), "the archive holds exactly the topic's events"
    for position, copies in found.items():
        assert len(copies) == 1, f"{position} is in {len(copies)} files"
        key, record = copies[0]
        match = KEY.match(key)
        assert match, key
        partition, first, last = int(match[2]), int(match[3]), int(match[4])
        assert record["partition"] == partition and first <= record["offset"] <= last
        assert record["key"] == record["event"]["product_id"]
        assert record["event"] == expected[position]
    by_partition = {}
    for key in keys:
        match = KEY.match(key)
        by_partition.setdefault(int(match[2]), []).append((int(match[3]), int(match[4])))
    for partition, ranges in by_partition.items():
        ranges.sort()
        assert ranges[0][0] == 0
        for (_, last), (first, _) in zip(ranges, ranges[1:]):
            assert first == last + 1, f"partition {partition}: gap or overlap at {last}/{first}"
