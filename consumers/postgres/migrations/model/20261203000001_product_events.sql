-- Every event of every product, for ever (issue 27): `GET /products/{id}/history` and
-- `?as_of=` read it. The projector writes it in the same transaction as the rows above and
-- the offsets, so it holds exactly what the model holds; a rebuild fills it like the rest.
-- A model made before this table existed gets it empty: `foldline-projector replay` fills
-- it with the older events.
CREATE TABLE product_events (
    product_id     text NOT NULL,
    version        int8 NOT NULL,
    event_type     text NOT NULL,
    occurred_at    timestamptz NOT NULL,
    partition      int4 NOT NULL,
    "offset"       int8 NOT NULL,
    actor          text,
    correlation_id text NOT NULL,
    payload        jsonb NOT NULL,
    PRIMARY KEY (product_id, version)
);
