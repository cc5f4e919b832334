//! Where a chat lives: chat logs, membership, receipt positions and group
//! invitations are partitioned by chat id over the chat databases
//! (`store.chat_urls`; by default the one accounts database), and the
//! list is fixed at the store's first start ([`claim`]).
//!
//! A chat's database is its id's random low 64 bits modulo the number of
//! chat databases ([`partition`]). A direct chat must be found from its
//! pair before its id is known, so its database is the pair key's hash
//! modulo the same number, and its id is drawn until it lands there
//! ([`direct_chat_id`]): both rules then agree.

use uuid::Uuid;

use super::{Database, PgError, describe_error};

/// The position in the chat databases of the chat with this id.
pub(crate) fn partition(id: &Uuid, count: usize) -> usize {
    let low = u64::from_be_bytes(id.as_bytes()[8..].try_into().unwrap_or([0; 8]));
    reduce(low, count)
}

/// The position of the direct chat of the pair with this key.
pub(crate) fn pair_partition(direct_key: &[u8], count: usize) -> usize {
    // FNV-1a: stable across builds and platforms, unlike `DefaultHasher`.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in direct_key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    reduce(hash, count)
}

#[allow(clippy::cast_possible_truncation)]
fn reduce(value: u64, count: usize) -> usize {
    // `count` is at least 1 and far below u64::MAX; the rest fits usize.
    (value % (count.max(1) as u64)) as usize
}

/// A new (time-ordered) id for the direct chat of the pair with this key:
/// `proposed` if it lands in the pair's database, else a fresh one that
/// does (on average `count` draws).
pub(crate) fn direct_chat_id(proposed: Uuid, direct_key: &[u8], count: usize) -> Uuid {
    let want = pair_partition(direct_key, count);
    let mut id = proposed;
    while partition(&id, count) != want {
        id = Uuid::now_v7();
    }
    id
}

/// Records the layout at the store's first start, and refuses a start
/// whose chat databases differ from it: another count, another order, or
/// a database of another store.
pub(super) async fn claim(accounts: &Database, chats: &[Database]) -> Result<(), PgError> {
    let count = i32::try_from(chats.len())
        .map_err(|_| PgError::Layout("store.chat_urls names too many databases".into()))?;
    let failed = |e: tokio_postgres::Error| PgError::Unreachable(describe_error(&e));
    let client = accounts.connection().await?;
    client
        .execute(
            "INSERT INTO natter_store (id, chat_databases) VALUES ($1, $2)
             ON CONFLICT (only_row) DO NOTHING",
            &[&Uuid::now_v7(), &count],
        )
        .await
        .map_err(failed)?;
    let row = client
        .query_one("SELECT id, chat_databases FROM natter_store", &[])
        .await
        .map_err(failed)?;
    let (store, recorded): (Uuid, i32) = (row.get(0), row.get(1));
    drop(client);
    if recorded != count {
        return Err(PgError::Layout(format!(
            "store.chat_urls names {count} chat database(s), but this store's chats were placed \
             over {recorded} at its first start; the list can never change (docs/scale.md)"
        )));
    }
    let claimed: Vec<i32> = {
        let client = accounts.connection().await?;
        client
            .query("SELECT position FROM natter_chat_databases", &[])
            .await
            .map_err(failed)?
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    for (position, db) in (0_i32..).zip(chats) {
        let client = db.connection().await?;
        let found = client
            .query("SELECT store_id, position FROM natter_chat_partition", &[])
            .await
            .map_err(failed)?;
        let found = match found.first() {
            Some(row) => (row.get::<_, Uuid>(0), row.get::<_, i32>(1)),
            None if claimed.contains(&position) => {
                return Err(PgError::Layout(format!(
                    "chat database {} of store.chat_urls holds no chats of this store, but \
                     its chats were placed there at its first start: the list can never \
                     change (docs/scale.md)",
                    position + 1
                )));
            }
            None => {
                client
                    .execute(
                        "INSERT INTO natter_chat_partition (store_id, position) VALUES ($1, $2)
                         ON CONFLICT (only_row) DO NOTHING",
                        &[&store, &position],
                    )
                    .await
                    .map_err(failed)?;
                let row = client
                    .query_one("SELECT store_id, position FROM natter_chat_partition", &[])
                    .await
                    .map_err(failed)?;
                (row.get::<_, Uuid>(0), row.get::<_, i32>(1))
            }
        };
        drop(client);
        if found.0 != store {
            return Err(PgError::Layout(format!(
                "chat database {} of store.chat_urls belongs to another store",
                position + 1
            )));
        }
        if found.1 != position {
            return Err(PgError::Layout(format!(
                "chat database {} of store.chat_urls is this store's chat database {}: \
                 the list's order can never change (docs/scale.md)",
                position + 1,
                found.1 + 1
            )));
        }
        if !claimed.contains(&position) {
            accounts
                .connection()
                .await?
                .execute(
                    "INSERT INTO natter_chat_databases (position) VALUES ($1)
                     ON CONFLICT (position) DO NOTHING",
                    &[&position],
                )
                .await
                .map_err(failed)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_direct_chat_id_lands_where_its_pair_does() {
        let key = [7_u8; 32];
        for count in 1..=9 {
            let id = direct_chat_id(Uuid::now_v7(), &key, count);
            assert_eq!(
                partition(&id, count),
                pair_partition(&key, count),
                "{count}"
            );
        }
    }

    #[test]
    fn chats_spread_over_every_database() {
        let mut seen = [0_u32; 4];
        for _ in 0..4000 {
            seen[partition(&Uuid::now_v7(), 4)] += 1;
        }
        assert!(seen.iter().all(|n| (800..1200).contains(n)), "{seen:?}");
    }

    #[test]
    fn one_database_holds_every_chat() {
        assert_eq!(partition(&Uuid::now_v7(), 1), 0);
        assert_eq!(pair_partition(&[1, 2, 3], 1), 0);
    }
}
