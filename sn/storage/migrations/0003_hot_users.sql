-- The hot set: users whose rows live alone on the Citus hot worker (`sn hot promote`, the
-- automatic promotion at the celebrity threshold, POST /admin/hot-users/{id}). Plain SQL that
-- is valid on single-node PostgreSQL too, where a row only records the decision; `sn cluster
-- init` makes it a reference table on Citus, so the rebalance strategy's placement function
-- can read it on the coordinator and every node.
-- hot = false marks a user demoted by hand: automatic promotion leaves such a user alone even
-- while their follower count stays above the threshold.
CREATE TABLE IF NOT EXISTS hot_users (
    user_id    bigint      PRIMARY KEY,
    hot        boolean     NOT NULL DEFAULT true,
    reason     text        NOT NULL DEFAULT 'manual',
    changed_at timestamptz NOT NULL DEFAULT now()
);
