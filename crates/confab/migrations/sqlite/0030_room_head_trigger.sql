-- Appends draw room ids from heads the store keeps in memory and insert a
-- batch's messages in one statement; this keeps each room's last id here,
-- for the next start and for the room list.
CREATE TRIGGER messages_room_head AFTER INSERT ON messages
BEGIN
    INSERT INTO rooms (name, last_id) VALUES (NEW.room, NEW.id)
    ON CONFLICT (name) DO UPDATE SET last_id = MAX(rooms.last_id, excluded.last_id);
END;
