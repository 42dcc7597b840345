-- create_schema: make sure the skiplock schema exists (first step of migrate).
-- Parameters: none. Result: none.
CREATE SCHEMA IF NOT EXISTS skiplock
