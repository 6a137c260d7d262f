-- Stock changes with almost every event, and an index on stock made every such update a
-- non-HOT one: a new row version with an entry in each of the table's three indexes. Without
-- it, an update that leaves id and seller_id alone stays on its page (HOT: no index entries)
-- when the page has room, which fillfactor keeps for it. The low-stock list
-- (`GET /products?stock_below=N&limit=…`) reads products in id order and stops at a page's
-- worth: see docs/design.md for its measured cost without the index.
DROP INDEX IF EXISTS products_stock;
ALTER TABLE products SET (fillfactor = 80);
