//! The slot and the publication the relay reads through, made ready by
//! the leader before it streams: created when missing, recreated when the
//! server lost the WAL the slot needed (`wal_status = 'lost'`); a slot of
//! that name that is not a pgoutput slot of this database is refused, never
//! dropped (another database's relay, or not c3's at all). A created
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
            "SELECT slot_type, plugin, database, current_database(), wal_status, active_pid \
             FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(pg("reading the slot"))?;
    let usable = match &found {
        None => false,
        Some(row) => {
            let kind: Option<String> = row.get(0);
            let plugin: Option<String> = row.get(1);
            let database: Option<String> = row.get(2);
            let here: String = row.get(3);
            let wal_status: Option<String> = row.get(4);
            let active: Option<i32> = row.get(5);
            // Slot names are cluster-wide, advisory locks per database: the
            // relays of two databases would both lead, each dropping the
            // other's slot in turn (every drop a new epoch, a fleet purge)
            // and never settle. A slot that is not a pgoutput slot of this
            // database is someone else's: never dropped.
            if kind.as_deref() != Some("logical")
                || plugin.as_deref() != Some("pgoutput")
                || database.as_deref() != Some(here.as_str())
            {
                return Err(format!(
                    "replication slot {slot} is taken ({} slot, plugin {}, database {}): \
                     each database's relay needs a slot of its own — RelayBuilder::slot or C3_RELAY_SLOT",
                    kind.as_deref().unwrap_or("?"),
                    plugin.as_deref().unwrap_or("none"),
                    database.as_deref().unwrap_or("none"),
                ));
            }
            let lost = wal_status.as_deref() == Some("lost");
            if lost {
                if let Some(pid) = active {
                    return Err(format!(
                        "slot {slot} lost the WAL it needed and process {pid} still uses it"
                    ));
                }
                tracing::warn!(target: "c3::relay", slot,
                    "the slot lost the WAL it needed; recreating it — every node will purge");
                client
                    .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                    .await
                    .map_err(pg("dropping the slot that lost its WAL"))?;
            }
            !lost
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
