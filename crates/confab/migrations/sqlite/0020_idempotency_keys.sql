-- Idempotency keys of REST API publishes: claimed before the message is
-- stored, completed with its id after. Pruned after a day.
CREATE TABLE idempotency_keys (
    key        TEXT PRIMARY KEY NOT NULL,
    scope      TEXT NOT NULL,
    target     TEXT NOT NULL,
    sender     TEXT NOT NULL,
    message_id INTEGER,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX idempotency_keys_created_at ON idempotency_keys (created_at);
