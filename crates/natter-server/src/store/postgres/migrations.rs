//! The PostgreSQL schema: SQL steps embedded in the binary, applied in
//! order at start. The whole run is one transaction holding a
//! transaction-scoped advisory lock, so nodes that start at the same time
//! take turns: the first applies what is missing, the others then find
//! nothing to do. PostgreSQL's DDL is transactional, so a failed step
//! leaves no trace and the version stays where it was.

use super::PgError;

/// The advisory lock every node takes to migrate (an arbitrary constant:
/// "natter" in ASCII).
const MIGRATION_LOCK: i64 = 0x6E61_7474_6572;

/// The steps, in order; a step's version is its place in the list
/// (starting at 1). Never edit a released step: add one.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_rate_limits.sql"),
    include_str!("migrations/0002_accounts.sql"),
    include_str!("migrations/0003_push.sql"),
    include_str!("migrations/0004_invites.sql"),
    include_str!("migrations/0005_chats.sql"),
    include_str!("migrations/0006_e2ee.sql"),
    include_str!("migrations/0007_group_invitations.sql"),
    include_str!("migrations/0008_search.sql"),
    include_str!("migrations/0009_media_segments.sql"),
    include_str!("migrations/0010_partitions.sql"),
];

/// The newest schema version this binary knows.
#[allow(clippy::cast_possible_truncation, clippy::cast_possible_wrap)]
pub const LATEST_VERSION: i32 = MIGRATIONS.len() as i32;

/// A name for the schema this binary makes (its version and a hash of its
/// steps): a test cluster keeps one migrated template database per schema.
#[must_use]
pub fn fingerprint() -> String {
    // FNV-1a: stable across builds and platforms, unlike `DefaultHasher`.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in MIGRATIONS.iter().flat_map(|step| step.bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    format!("v{LATEST_VERSION}_{hash:016x}")
}

/// Applies the steps the database lacks, under the advisory lock.
pub(super) async fn migrate(client: &mut deadpool_postgres::Object) -> Result<(), PgError> {
    let failed = |e: tokio_postgres::Error| PgError::Migration(super::describe_error(&e));
    let tx = client
        .transaction()
        .await
        .map_err(|e| PgError::Unreachable(super::describe_error(&e)))?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(failed)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS natter_schema (
             version integer NOT NULL PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await
    .map_err(failed)?;
    let found: i32 = tx
        .query_one("SELECT coalesce(max(version), 0) FROM natter_schema", &[])
        .await
        .map_err(failed)?
        .get(0);
    if found > LATEST_VERSION {
        return Err(PgError::NewerSchema {
            found,
            known: LATEST_VERSION,
        });
    }
    for (version, step) in (1..)
        .zip(MIGRATIONS.iter())
        .skip_while(|(v, _)| *v <= found)
    {
        tx.batch_execute(step).await.map_err(|e| {
            PgError::Migration(format!("step {version}: {}", super::describe_error(&e)))
        })?;
        tx.execute(
            "INSERT INTO natter_schema (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(failed)?;
    }
    tx.commit().await.map_err(failed)
}
