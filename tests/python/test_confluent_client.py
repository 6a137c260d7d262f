"""Confluent's own Python client against our registry and our records.

Proves the registry speaks the API Confluent's SchemaRegistryClient uses, and that events the
producer appended decode with Confluent's AvroDeserializer through that registry.
"""
import json
import os
import urllib.request
import uuid

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext

REGISTRY = os.environ["FOLDLINE_REGISTRY_URL"]
BROKERS = os.environ["FOLDLINE_BROKERS"]
PRODUCER = os.environ["FOLDLINE_PRODUCER_URL"]
# An admin token minted by scripts/test with the producer's secret.
TOKEN = os.environ["FOLDLINE_TEST_TOKEN"]
TOPIC = os.environ["FOLDLINE_TEST_TOPIC"]

V1 = json.dumps({"type": "record", "name": "Thing", "fields": [{"name": "a", "type": "long"}]})
V2 = json.dumps({"type": "record", "name": "Thing", "fields": [
    {"name": "a", "type": "long"}, {"name": "b", "type": ["null", "string"], "default": None}]})
BAD = json.dumps({"type": "record", "name": "Thing", "fields": [{"name": "c", "type": "string"}]})


def admin_client():
    """Changing the registry needs an admin bearer token; Confluent's client sends one as a
    static token (the cluster and pool headers it adds are ignored)."""
    return SchemaRegistryClient({
        "url": REGISTRY,
        "bearer.auth.credentials.source": "STATIC_TOKEN",
        "bearer.auth.token": TOKEN,
        "bearer.auth.logical.cluster": "foldline",
        "bearer.auth.identity.pool.id": "foldline",
    })


def test_registry_writes_need_an_admin_token_and_reads_do_not():
    anonymous = SchemaRegistryClient({"url": REGISTRY})
    subject = f"anonymous-{uuid.uuid4()}"
    try:
        anonymous.register_schema(subject, Schema(V1, "AVRO"))
        raise AssertionError("registered without a token")
    except Exception as error:  # SchemaRegistryError with HTTP 401
        assert getattr(error, "http_status_code", None) == 401, error
    try:
        anonymous.set_compatibility(subject_name=subject, level="NONE")
        raise AssertionError("changed the config without a token")
    except Exception as error:
        assert getattr(error, "http_status_code", None) == 401, error
    admin_client().register_schema(subject, Schema(V1, "AVRO"))
    assert anonymous.get_latest_version(subject).version == 1


def test_schema_registry_client_register_lookup_versions_and_compatibility():
    client = admin_client()
    subject = f"py-{uuid.uuid4().hex[:10]}-value"
    first_id = client.register_schema(subject, Schema(V1, "AVRO"))
    assert client.register_schema(subject, Schema(V1, "AVRO")) == first_id
    assert client.test_compatibility(subject, Schema(V2, "AVRO")) is True
    assert client.test_compatibility(subject, Schema(BAD, "AVRO")) is False
    second_id = client.register_schema(subject, Schema(V2, "AVRO"))
    assert second_id != first_id
    latest = client.get_latest_version(subject)
    assert latest.version == 2 and latest.schema_id == second_id
    assert client.lookup_schema(subject, Schema(V1, "AVRO")).version == 1
    assert client.get_versions(subject) == [1, 2]
    assert subject in client.get_subjects()
    assert json.loads(client.get_schema(first_id).schema_str) == json.loads(V1)
    assert client.get_compatibility() == "BACKWARD"
    client.set_compatibility(subject_name=subject, level="NONE")
    assert client.get_compatibility(subject) == "NONE"
    try:
        client.register_schema(f"strict-{subject}", Schema(V1, "AVRO"))
        client.register_schema(f"strict-{subject}", Schema(BAD, "AVRO"))
        raise AssertionError("an incompatible schema was accepted")
    except Exception as error:  # SchemaRegistryError
        assert getattr(error, "http_status_code", None) == 409, error


def test_events_decode_with_confluents_avro_deserializer():
    body = json.dumps({"name": "Kettle", "price_cents": 3499, "stock": 9, "seller_id": "s-py"}).encode()
    request = urllib.request.Request(f"{PRODUCER}/products", data=body, method="POST",
                                     headers={"content-type": "application/json", "authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request) as response:
        assert response.status == 201
        product_id = json.load(response)["id"]

    deserializer = AvroDeserializer(SchemaRegistryClient({"url": REGISTRY}))
    consumer = Consumer({"bootstrap.servers": BROKERS, "group.id": f"py-{uuid.uuid4().hex}",
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    metadata = consumer.list_topics(TOPIC, timeout=10)
    partitions = list(metadata.topics[TOPIC].partitions)
    consumer.assign([TopicPartition(TOPIC, p, 0) for p in partitions])
    found = None
    for _ in range(100):
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        value = deserializer(message.value(), SerializationContext(TOPIC, MessageField.VALUE))
        if value["product_id"] == product_id:
            found = (value, dict(message.headers() or []))
            break
    consumer.close()
    assert found, "the event was not found in the topic"
    value, headers = found
    assert value["version"] == 1
    assert value["payload"]["name"] == "Kettle"
    assert value["payload"]["stock"] == 9
    assert headers["event-type"] == b"ProductCreated"
    assert headers["traceparent"].startswith(b"00-")
