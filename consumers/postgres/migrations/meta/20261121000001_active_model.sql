-- Which schema holds the read model readers see. A replay builds a new schema and swaps this
-- one row in a transaction, so a reader sees either the old complete model or the new one.
CREATE TABLE active_model (
    only_row    boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    schema_name text NOT NULL,
    swapped_at  timestamptz NOT NULL DEFAULT now()
);
