-- `GET /products?stock_below=N` (the live page's low-stock list): few products are low on
-- stock, so a partial index on stock keeps that read cheap however many products there are.
CREATE INDEX products_stock ON products (stock, id) WHERE NOT deleted AND name IS NOT NULL;
