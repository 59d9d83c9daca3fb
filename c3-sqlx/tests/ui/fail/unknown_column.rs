#[derive(c3_sqlx::Cached)]
#[c3(table = "users", key = "user_id")]
struct User {
    id: i64,
    name: String,
}

fn main() {}
