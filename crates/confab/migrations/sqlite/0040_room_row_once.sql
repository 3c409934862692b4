-- A room's row is written once, in the batch that stores its first
-- message; its head (the highest id) is read back from its messages, one
-- index seek, when the store opens and for the room list. Appends no
-- longer rewrite the row for every message: that was about a quarter of
-- an append in memory. `last_id` stays as written then, and as the trigger
-- left it for rooms made before.
DROP TRIGGER messages_room_head;
