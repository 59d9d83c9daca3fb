#[derive(c3_sqlx::Cached)]
#[c3(table = "users")]
struct User {
    id: i64,
}

fn main() {}
