#[derive(c3_sqlx::Cached)]
#[c3(table = "users", key = "id", save = "name, emial")]
struct User {
    id: i64,
    name: String,
    email: String,
}

fn main() {}
