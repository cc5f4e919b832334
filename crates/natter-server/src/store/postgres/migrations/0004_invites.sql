-- Invites (signup.mode = "invite"), kept only as the SHA-256 of their
-- token, like access tokens. A registration locks its invite's row, so two
-- nodes never spend its last use twice.

CREATE TABLE invites (
    id         uuid PRIMARY KEY,
    token_hash bytea NOT NULL UNIQUE,
    max_uses   integer NOT NULL CHECK (max_uses > 0),
    uses       integer NOT NULL DEFAULT 0,
    expires_at bigint,
    created_at bigint NOT NULL,
    revoked_at bigint
);
