-- Records the projector could not apply (a value PostgreSQL refuses, a sum past its column)
-- and every later record of the same product: the product is parked, everything else flows.
-- Written in the same transaction as the offsets that move past them, so a parked record is
-- parked exactly once; `foldline parked retry` applies them and deletes them in one
-- transaction. Only where the record is and why: the log keeps the record itself.
-- `product_id` is bytea: a record written around the API may carry a NUL, which text refuses.
CREATE TABLE parked_events (
    consumer_group text NOT NULL,
    topic          text NOT NULL,
    partition      int4 NOT NULL,
    "offset"       int8 NOT NULL,
    product_id     bytea NOT NULL,
    version        int8 NOT NULL,
    event_type     text NOT NULL,
    reason         text NOT NULL,
    parked_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition, "offset")
);
CREATE INDEX parked_events_by_product ON parked_events (consumer_group, topic, product_id);
