-- End-to-end encryption: the MLS delivery service (docs/e2ee.md).
-- An encrypted chat's epoch: the next commit must be for this one.
ALTER TABLE chats ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;

-- A user's identity key (Ed25519 public key). The account row stays as a
-- tombstone on deletion, so deletion removes this row explicitly.
CREATE TABLE identity_keys (
    user_id      BLOB PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    identity_key BLOB NOT NULL,
    updated_at   INTEGER NOT NULL
) STRICT;

-- A device's MLS signature key, link key and certificate (NULL until a
-- device holding the identity key signs it). Goes with the device.
CREATE TABLE device_keys (
    device_id     BLOB PRIMARY KEY REFERENCES devices(id) ON DELETE CASCADE,
    user_id       BLOB NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    signature_key BLOB NOT NULL,
    link_key      BLOB NOT NULL,
    certificate   BLOB,
    created_at    INTEGER NOT NULL
) STRICT;
CREATE INDEX device_keys_by_user ON device_keys(user_id);

-- One-time KeyPackages and at most one last-resort package per device.
CREATE TABLE key_packages (
    id          INTEGER PRIMARY KEY,
    device_id   BLOB NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    last_resort INTEGER NOT NULL,
    bytes       BLOB NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX key_packages_by_device ON key_packages(device_id, last_resort, id);
CREATE UNIQUE INDEX key_packages_one_last_resort ON key_packages(device_id) WHERE last_resort = 1;

-- Payloads waiting for one device (Welcomes, handovers) until acknowledged.
CREATE TABLE device_inbox (
    id          INTEGER PRIMARY KEY,
    device_id   BLOB NOT NULL REFERENCES devices(id) ON DELETE CASCADE,
    kind        TEXT NOT NULL CHECK (kind IN ('welcome', 'handover')),
    chat_id     BLOB,
    seq         INTEGER,
    from_user   BLOB NOT NULL,
    from_device BLOB NOT NULL,
    payload     BLOB NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX device_inbox_by_device ON device_inbox(device_id, id);
