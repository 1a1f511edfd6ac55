"""Citus operations above storage: cluster set-up, hot users on the hot worker, the cluster status.

The same schema runs on single-node PostgreSQL and on a Citus cluster. Every operation here
first asks the database which one it is talking to (`coordinator.cluster_mode`): without the
citus extension, init applies the migrations and stops, promotion only records the hot set, and
the status says "single-node".

On Citus (a coordinator, regular workers, and one hot worker):

- users, friendships, followers and posts are distributed by their user column in one
  colocation group, so everything a request reads about one user is on one shard;
  post_index, user_emails and dialog_messages are distributed by their own keys, each in a
  colocation group of its own; hot_users is a reference table; outbox and schema_migrations
  stay plain tables on the coordinator (see `plan.COORDINATOR_LOCAL` for why).
- A hot user's rows are isolated into shards of their own (`isolate_tenant_to_new_shard(...,
  'CASCADE')`) and moved to the hot worker. The hot worker must have shouldhaveshards = true
  for Citus to accept the move, so what keeps regular shards off it, and hot shards on it, is
  the rebalance strategy `sn_hot_pinned` (made the default), whose placement function allows a
  shard on the hot worker if and only if it is an isolated shard of a hot user.

Modules, by what they do: `provision` (`sn cluster init`), `hot_users` (promote, demote, the
automatic promoter), `status` (GET /admin/cluster/status, `sn cluster status`), `cli`. Beneath
them: `plan` (what the cluster should look like), `coordinator` (what it looks like now, the
cluster lock, connections), `nodes` (host:port addresses) and `errors`.
"""
