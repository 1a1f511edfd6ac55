-- Name search that works under any locale (see sn/storage/name_keys.py): the case-folded,
-- normalised names are computed in Python and stored in columns of their own, compared byte by
-- byte (COLLATE "C"), so a prefix is an index range on every server, embedded (C locale), a
-- UTF-8 one or Citus. lower() followed the database's LC_CTYPE and left Cyrillic unchanged
-- under C.
-- The migration's Python step (name_keys.migrate) then fills the existing rows and swaps the
-- indexes: CREATE/DROP INDEX on a Citus distributed table must be a query of its own (Citus
-- forwards the query string to the shards, and a string of several commands is refused there).
-- On Citus the DDL runs over the shards in sequence on one connection per node, so the
-- single-shard UPDATEs of the backfill in the same transaction can reuse those connections.
SET LOCAL citus.multi_shard_modify_mode TO 'sequential';
ALTER TABLE users ADD COLUMN IF NOT EXISTS first_name_key text COLLATE "C";
ALTER TABLE users ADD COLUMN IF NOT EXISTS second_name_key text COLLATE "C";
