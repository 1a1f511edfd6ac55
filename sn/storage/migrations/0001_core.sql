-- Core schema. Every primary key and unique constraint contains its table's distribution
-- column, so the Citus issue can distribute these tables without reshaping them:
--   users, friendships, followers, posts  -> by user id (colocated)
--   user_emails                            -> by email
--   post_index                             -> by post id
--   dialog_messages                        -> by dialog id

CREATE TABLE IF NOT EXISTS users (
    id            bigint      PRIMARY KEY,
    first_name    text        NOT NULL,
    second_name   text        NOT NULL,
    birthdate     date        NOT NULL,
    biography     text,
    city          text        NOT NULL,
    gender        text,
    interests     text[],
    email         text,
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Prefix search on both names, case-insensitive: `lower(col) LIKE 'abc%'` with text_pattern_ops
-- is an index range scan whatever the database collation.
CREATE INDEX IF NOT EXISTS users_name_prefix_idx
    ON users (lower(first_name) text_pattern_ops, lower(second_name) text_pattern_ops);

-- Email uniqueness cannot be a constraint on users (distributed by id), so it lives in its own
-- table keyed by the normalised email, written in the same transaction as the user.
CREATE TABLE IF NOT EXISTS user_emails (
    email   text   PRIMARY KEY,
    user_id bigint NOT NULL
);

-- "Whom does X follow" (X's shard) ...
CREATE TABLE IF NOT EXISTS friendships (
    user_id    bigint      NOT NULL,
    friend_id  bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, friend_id)
);

-- ... and its mirror, "who follows X" (also X's shard), written in the same transaction.
CREATE TABLE IF NOT EXISTS followers (
    author_id   bigint      NOT NULL,
    follower_id bigint      NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (author_id, follower_id)
);

CREATE TABLE IF NOT EXISTS posts (
    author_id  bigint      NOT NULL,
    id         bigint      NOT NULL,
    text       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz,
    PRIMARY KEY (author_id, id)
);

-- /post/get/{id} and /post/update carry only the post id; this maps it to the author so the
-- post itself is read from its author's shard.
CREATE TABLE IF NOT EXISTS post_index (
    id        bigint PRIMARY KEY,
    author_id bigint NOT NULL
);

CREATE TABLE IF NOT EXISTS dialog_messages (
    dialog_id    text        NOT NULL,
    id           bigint      NOT NULL,
    sender_id    bigint      NOT NULL,
    recipient_id bigint      NOT NULL,
    text         text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dialog_id, id)
);
