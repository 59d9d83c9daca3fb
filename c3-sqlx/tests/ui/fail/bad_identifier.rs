#[derive(c3_sqlx::Cached)]
#[c3(table = "users; DROP TABLE users", key = "id")]
struct User {
    id: i64,
}

fn main() {}
