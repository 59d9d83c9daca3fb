#[derive(c3_sqlx::Cached)]
#[c3(table = "users", key = "id")]
struct User(i64);

fn main() {}
