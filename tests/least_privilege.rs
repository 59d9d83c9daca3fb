//! c3 without DDL rights: `migrate(false)` checks the schema instead of
//! creating it, and a role with only the grants README "Deploying" lists
//! runs every operation.

mod support;

use support::{DELIVERY, wait_until};
use support::{TestDb, received, run_cleanup};

/// Drops the test's role, also when the test fails (roles are cluster-wide).
struct Role {
    url: String,
    name: String,
}

impl Drop for Role {
    fn drop(&mut self) {
        let sql = format!(
            "DROP OWNED BY \"{0}\" CASCADE; DROP ROLE IF EXISTS \"{0}\"",
            self.name
        );
        run_cleanup(&self.url, move |c| async move {
            let _ = c.batch_execute(&sql).await;
        });
    }
}

#[tokio::test]
async fn migrate_false_lists_what_is_missing_and_a_least_privilege_role_works() {
    let db = TestDb::new("least_priv").await;
    // Nothing applied yet: the error names what is missing.
    let err = db.builder().migrate(false).build().await.unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.kind(), c3::ErrorKind::Config, "{msg}");
    for object in [
        "cache_data_tags",
        "cache_data_deleted_tags",
        "cache_data_version_seq",
        "cache_data_invalidate",
        "trigger cache_data_bump_version",
    ] {
        assert!(msg.contains(object), "{object} not named in: {msg}");
    }

    // A DBA applies the DDL and grants the application role DML only.
    let ddl = db.builder().migration_sql().unwrap();
    db.client.batch_execute(&ddl).await.unwrap();
    let role = Role {
        url: db.url.clone(),
        name: format!("{}_app", db.schema),
    };
    db.client
        .batch_execute(&format!(
            "CREATE ROLE \"{r}\" LOGIN;
             GRANT USAGE ON SCHEMA \"{s}\" TO \"{r}\";
             GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA \"{s}\" TO \"{r}\";
             GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA \"{s}\" TO \"{r}\";",
            r = role.name,
            s = db.schema
        ))
        .await
        .unwrap();
    let as_app = db.url.replacen("postgres@", &format!("{}@", role.name), 1);

    // It may not run DDL…
    let err = db.builder().postgres(&as_app).build().await.unwrap_err();
    assert!(err.to_string().contains("permission denied"), "{err}");
    // …and needs none.
    // Warm reconnect on: its replay statement (snapshot, control functions,
    // the live timeline, the version sequence) must run as this role too.
    let node = || {
        db.builder()
            .postgres(&as_app)
            .migrate(false)
            .warm_reconnect(true)
            .build()
    };
    let (a, b) = (node().await.unwrap(), node().await.unwrap());
    a.set("k", &1u32).await.unwrap();
    assert_eq!(*b.get::<u32>("k").await.unwrap().unwrap(), 1);
    let r = b.stats().invalidations_received;
    a.set_tagged("k", &2u32, None, &["t"]).await.unwrap();
    received(&b, r).await;
    assert_eq!(b.invalidate_tag("t").await.unwrap(), 1);
    let fill = a.begin_fill(&["f"]).await.unwrap();
    assert!(fill.store("f", &3u32, None, &["t"]).await.unwrap());
    a.delete("f").await.unwrap();
    a.clear().await.unwrap();
    let loaded = b
        .get_or_load("l", &c3::core::LoadOptions::new(), || async {
            Ok::<_, std::io::Error>(Some(4u32))
        })
        .await
        .unwrap();
    assert_eq!(*loaded.unwrap(), 4);
    // A lost listener replays the change log as the DML-only role: warm,
    // not a purge after a failed replay.
    b.set("warm", &5u32).await.unwrap();
    let before = b.stats();
    wait_until("B's mark covers its write", DELIVERY, || async {
        b.stats().replay_marks >= before.replay_marks + 2
    })
    .await;
    let before = b.stats();
    assert_eq!(db.kill_listener(&b).await, 1);
    wait_until("B is back", DELIVERY, || async {
        let s = b.stats();
        s.warm_reconnects + s.warm_reconnect_fallbacks
            > before.warm_reconnects + before.warm_reconnect_fallbacks
    })
    .await;
    let after = b.stats();
    assert_eq!(
        (
            after.warm_reconnects - before.warm_reconnects,
            after.warm_reconnect_fallbacks - before.warm_reconnect_fallbacks
        ),
        (1, 0),
        "the replay ran as the DML-only role"
    );
    a.shutdown().await;
    b.shutdown().await;
}
