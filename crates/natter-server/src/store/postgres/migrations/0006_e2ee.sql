-- End-to-end encryption: the MLS delivery service (docs/e2ee.md): identity
-- keys, device keys and certificates, KeyPackages, device inboxes. A claim
-- deletes each one-time package as it hands it out (SKIP LOCKED), so no two
-- claimers on any nodes get the same one.

CREATE TABLE identity_keys (
    user_id      uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    identity_key bytea NOT NULL,
    updated_at   bigint NOT NULL
);

CREATE TABLE device_keys (
    device_id     uuid PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    signature_key bytea NOT NULL,
    link_key      bytea NOT NULL,
    certificate   bytea,
    created_at    bigint NOT NULL
);
CREATE INDEX device_keys_by_user ON device_keys (user_id);

CREATE TABLE key_packages (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    last_resort boolean NOT NULL,
    bytes       bytea NOT NULL,
    created_at  bigint NOT NULL
);
CREATE INDEX key_packages_by_device ON key_packages (device_id, last_resort, id);
CREATE UNIQUE INDEX key_packages_one_last_resort ON key_packages (device_id) WHERE last_resort;

CREATE TABLE device_inbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    device_id   uuid NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('welcome', 'handover')),
    chat_id     uuid,
    seq         bigint,
    from_user   uuid NOT NULL,
    from_device uuid NOT NULL,
    payload     bytea NOT NULL,
    created_at  bigint NOT NULL
);
CREATE INDEX device_inbox_by_device ON device_inbox (device_id, id);
