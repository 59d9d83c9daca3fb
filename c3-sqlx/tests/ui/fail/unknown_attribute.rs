#[derive(c3_sqlx::Cached)]
#[c3(table = "users", key = "id", tll = "10m")]
struct User {
    id: i64,
}

fn main() {}
