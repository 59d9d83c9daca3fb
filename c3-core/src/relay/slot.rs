//! The slot and the publication the relay reads through, made ready by
//! the leader before it streams: created when missing, recreated when the
//! server lost the WAL the slot needed (`wal_status = 'lost'`) or when a
//! slot of that name is not a pgoutput slot of this database. A created
//! slot starts at the server's current position: whatever committed before
//! it is never decoded, which is why every stream starts a new epoch and
//! every node purges (PROTOCOL.md §6).

use crate::ident::quote_ident;

/// What preparing found.
pub(crate) struct Prepared {
    /// The slot was created (it did not exist, or was unusable).
    pub(crate) created: bool,
}

pub(crate) async fn prepare(
    client: &tokio_postgres::Client,
    slot: &str,
    publication: &str,
) -> Result<Prepared, String> {
    let pg = |what: &'static str| {
        move |e: tokio_postgres::Error| format!("{what}: {}", crate::error::with_causes(&e))
    };
    let has_publication: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
            &[&publication],
        )
        .await
        .map_err(pg("reading the publication"))?
        .get(0);
    if !has_publication {
        // pgoutput needs a publication, even one that replicates nothing.
        client
            .batch_execute(&format!("CREATE PUBLICATION {}", quote_ident(publication)))
            .await
            .map_err(pg("creating the publication (the relay's role needs CREATE on the database, or run the c3 migration in relay mode)"))?;
    }
    let found = client
        .query_opt(
            "SELECT slot_type = 'logical' AND plugin = 'pgoutput' AND database = current_database(), \
                    wal_status, active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(pg("reading the slot"))?;
    let usable = match &found {
        None => false,
        Some(row) => {
            let ours: Option<bool> = row.get(0);
            let wal_status: Option<String> = row.get(1);
            let active: Option<i32> = row.get(2);
            let ok = ours == Some(true) && wal_status.as_deref() != Some("lost");
            if !ok {
                if let Some(pid) = active {
                    return Err(format!(
                        "slot {slot} is unusable (not a pgoutput slot of this database, or its WAL was lost) and process {pid} still uses it"
                    ));
                }
                tracing::warn!(target: "c3::relay", slot, wal_status = ?wal_status,
                    "the slot is unusable (its WAL was removed, or it is not a pgoutput slot of this database); recreating it — every node will purge");
                client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                    .await
                    .map_err(pg("dropping the unusable slot"))?;
            }
            ok
        }
    };
    if usable {
        return Ok(Prepared { created: false });
    }
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await
        .map_err(pg("creating the slot (the relay's role needs REPLICATION; the server wal_level = logical)"))?;
    tracing::info!(target: "c3::relay", slot, "created the replication slot");
    Ok(Prepared { created: true })
}
