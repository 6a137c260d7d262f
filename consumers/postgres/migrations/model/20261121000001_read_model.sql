-- The read model of CONTRACT.md, one copy per model schema (live, or a replay's shadow).

-- Products. Deleted products keep their row (deleted = true) so a redelivered older event can
-- never bring them back; the query API answers 404 for them.
CREATE TABLE products (
    id          text PRIMARY KEY,
    name        text,
    price_cents bigint,
    stock       bigint,
    seller_id   text,
    version     bigint NOT NULL,
    updated_at  timestamptz NOT NULL,
    deleted     boolean NOT NULL DEFAULT false
);
CREATE INDEX products_by_seller ON products (seller_id, id) WHERE NOT deleted;

-- Per-seller stats, recomputed for the sellers a batch touched.
CREATE TABLE seller_stats (
    seller_id          text PRIMARY KEY,
    products           bigint NOT NULL,
    total_stock        bigint NOT NULL,
    stock_value_cents  bigint NOT NULL,
    low_stock_products bigint NOT NULL
);

-- Event analytics: events per type and hour (UTC).
CREATE TABLE event_counts (
    event_type text NOT NULL,
    hour       timestamptz NOT NULL,
    events     bigint NOT NULL,
    PRIMARY KEY (event_type, hour)
);

-- The next offset to apply per partition, written in the same transaction as the rows above.
CREATE TABLE consumer_offsets (
    consumer_group text NOT NULL,
    topic          text NOT NULL,
    partition      integer NOT NULL,
    next_offset    bigint NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition)
);
