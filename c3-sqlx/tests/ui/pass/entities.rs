use c3_sqlx::Cached;

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize, Cached)]
#[c3(table = "users", schema = "app", key = "id", ttl = "10m", fail_safe = "1h", negative_ttl = "30s")]
struct User {
    id: i64,
    email: String,
    #[sqlx(rename = "display_name")]
    name: String,
}

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize, Cached)]
#[c3(table = "members", key = "org_id, user_id", namespace = "member", save = "role")]
struct Member {
    org_id: i64,
    user_id: String,
    role: String,
    joined: String,
}

fn main() {
    let e = User::ENTITY;
    assert_eq!(e.table, "\"app\".\"users\"");
    assert_eq!(
        e.select_by_key,
        "SELECT \"id\", \"email\", \"display_name\" FROM \"app\".\"users\" WHERE \"id\" = $1"
    );
    assert_eq!(e.ttl, Some(std::time::Duration::from_secs(600)));
    assert_eq!(e.fail_safe, Some(std::time::Duration::from_secs(3600)));
    assert_eq!(User::cache_key(&42), "users:42");

    let m = Member::ENTITY;
    assert_eq!(
        m.upsert,
        "INSERT INTO \"members\" (\"org_id\", \"user_id\", \"role\") VALUES ($1, $2, $3) \
         ON CONFLICT (\"org_id\", \"user_id\") DO UPDATE SET \"role\" = EXCLUDED.\"role\""
    );
    assert_eq!(
        m.select_by_keys,
        "SELECT \"org_id\", \"user_id\", \"role\", \"joined\" FROM \"members\" \
         WHERE (\"org_id\", \"user_id\") IN (SELECT * FROM unnest($1, $2))"
    );
    assert_eq!(Member::cache_key(&(7, "a:b".to_owned())), "member:7:a%3Ab");
    assert!(m.trigger_key.starts_with("'member:' || replace(replace(($ROW.\"org_id\")::text"));
}
