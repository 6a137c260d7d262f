-- A product's own low-stock threshold (schema of 2026-12-07: `ProductCreated.low_stock_threshold`,
-- `LowStockThresholdSet`); NULL = the projector's default. Older projectors name their columns,
-- so they run beside this one and leave it NULL for the events they apply.
ALTER TABLE products ADD COLUMN low_stock_threshold bigint;
