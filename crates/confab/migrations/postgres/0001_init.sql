-- Rooms and the last message id each has handed out. A batch takes the
-- row lock of each of its rooms (in name order), so ids are dense and
-- committed in id order, whichever node writes.
CREATE TABLE rooms (
    name    TEXT PRIMARY KEY NOT NULL,
    last_id BIGINT NOT NULL
);

-- Room messages; (room, id) is the key and ids increase per room.
CREATE TABLE messages (
    room      TEXT NOT NULL,
    id        BIGINT NOT NULL,
    sender    TEXT NOT NULL,
    body      TEXT NOT NULL,
    client_id TEXT,
    ts        BIGINT NOT NULL,
    PRIMARY KEY (room, id)
);

-- The last direct-message id handed out: one row, locked by every batch
-- that stores direct messages, so they too commit in id order.
CREATE TABLE dm_sequence (
    one     BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (one),
    last_id BIGINT NOT NULL
);
INSERT INTO dm_sequence (one, last_id) VALUES (TRUE, 0);

-- Direct messages; ids are cluster-wide.
CREATE TABLE direct_messages (
    id        BIGINT PRIMARY KEY,
    sender    TEXT NOT NULL,
    recipient TEXT NOT NULL,
    body      TEXT NOT NULL,
    client_id TEXT,
    ts        BIGINT NOT NULL
);
CREATE INDEX direct_messages_recipient ON direct_messages (recipient, id);
CREATE INDEX direct_messages_sender ON direct_messages (sender, id);

-- Users that have connected once, and the highest direct-message id
-- delivered to any of their connections.
CREATE TABLE users (
    name         TEXT PRIMARY KEY NOT NULL,
    first_seen   BIGINT NOT NULL,
    delivered_id BIGINT NOT NULL DEFAULT 0
);
