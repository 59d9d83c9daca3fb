#[derive(c3_sqlx::Cached)]
#[c3(table = "users", key = "id", ttl = "10 minutes")]
struct User {
    id: i64,
}

fn main() {}
