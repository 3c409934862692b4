-- Rooms and the last message id each has handed out.
CREATE TABLE rooms (
    name    TEXT PRIMARY KEY NOT NULL,
    last_id INTEGER NOT NULL
);

-- Room messages; (room, id) is the key and ids increase per room.
CREATE TABLE messages (
    room      TEXT NOT NULL,
    id        INTEGER NOT NULL,
    sender    TEXT NOT NULL,
    body      TEXT NOT NULL,
    client_id TEXT,
    ts        INTEGER NOT NULL,
    PRIMARY KEY (room, id)
) WITHOUT ROWID;

-- Direct messages; ids are server-wide.
CREATE TABLE direct_messages (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    sender    TEXT NOT NULL,
    recipient TEXT NOT NULL,
    body      TEXT NOT NULL,
    client_id TEXT,
    ts        INTEGER NOT NULL
);
CREATE INDEX direct_messages_recipient ON direct_messages (recipient, id);
CREATE INDEX direct_messages_sender ON direct_messages (sender, id);

-- Users that have connected once, and the highest direct-message id
-- delivered to any of their connections.
CREATE TABLE users (
    name         TEXT PRIMARY KEY NOT NULL,
    first_seen   INTEGER NOT NULL,
    delivered_id INTEGER NOT NULL DEFAULT 0
);
