-- Where each partition's history (product_events) starts in this model. A model made before
-- product_events existed holds no events before these offsets (until a replay fills them);
-- a model made since, or by a replay, has no rows here: its history starts at offset 0. A
-- rebuild compares histories only from here on.
CREATE TABLE history_starts (
    consumer_group text NOT NULL,
    topic          text NOT NULL,
    partition      int4 NOT NULL,
    first_offset   int8 NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition)
);
INSERT INTO history_starts (consumer_group, topic, partition, first_offset)
SELECT o.consumer_group, o.topic, o.partition,
       coalesce((SELECT min(e."offset") FROM product_events e WHERE e.partition = o.partition),
                o.next_offset)
FROM consumer_offsets o
WHERE o.next_offset > 0;
