-- Transactional outbox for the feed pipeline: a feed-changing write inserts its event here in
-- the same transaction, and a relay publishes it to the bus (RabbitMQ / Redis Streams) and
-- deletes it. A post committed while the bus is down is published when the bus returns, even
-- if the process crashed meanwhile. Keyed by the event owner's id (the post author, or the
-- follower for follow events), so on Citus the row lives on the same shard as the write.
CREATE TABLE IF NOT EXISTS outbox (
    owner_id   bigint      NOT NULL,
    id         bigint      NOT NULL,
    payload    bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (owner_id, id)
);
CREATE INDEX IF NOT EXISTS outbox_id_idx ON outbox (id);
