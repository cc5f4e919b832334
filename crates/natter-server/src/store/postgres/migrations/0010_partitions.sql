-- How a store's chats are placed over its chat databases (store.chat_urls):
-- by chat id, over a list fixed at the store's first start. The accounts
-- database holds the store's id and the list's length; each chat database
-- holds its position in the list. A node started with the list lengthened,
-- shortened, reordered or naming another store's database refuses to
-- start, rather than look for chats where they are not. Every database
-- gets both tables (every database gets the whole schema).
CREATE TABLE natter_store (
    only_row       boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    id             uuid NOT NULL,
    chat_databases integer NOT NULL CHECK (chat_databases > 0)
);

-- In the accounts database: the positions whose chat database has been
-- claimed, so an empty database put in a claimed one's place is refused.
CREATE TABLE natter_chat_databases (
    position integer PRIMARY KEY CHECK (position >= 0)
);

-- In a chat database: which store's, and where in its list.
CREATE TABLE natter_chat_partition (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    store_id uuid NOT NULL,
    position integer NOT NULL CHECK (position >= 0)
);

-- The Welcomes a commit hands out, written in the chat database's
-- transaction with the commit, then moved to the devices' inboxes in the
-- accounts database (right after, or by the device's next inbox read when
-- a node stopped in between). A device has at most one Welcome per commit.
CREATE TABLE welcome_outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   uuid NOT NULL,
    chat_id     uuid NOT NULL,
    seq         bigint NOT NULL,
    from_user   uuid NOT NULL,
    from_device uuid NOT NULL,
    payload     bytea NOT NULL,
    created_at  bigint NOT NULL
);
CREATE INDEX welcome_outbox_by_device ON welcome_outbox (device_id, id);
CREATE UNIQUE INDEX device_inbox_one_welcome ON device_inbox (device_id, chat_id, seq)
    WHERE kind = 'welcome';
