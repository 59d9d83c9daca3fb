//! Prints the SQL c3 runs at start-up (idempotent DDL) for a schema and
//! table, for a DBA or a migration tool (`sqlx migrate`, Flyway, Atlas) when
//! the application runs with `migrate(false)` / `C3_MIGRATE=false`.
//!
//! ```text
//! cargo run --bin c3-sql -- [--schema public] [--table cache_data] > c3.sql
//! ```

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut builder = c3::C3::builder();
    let mut i = 0;
    while i < args.len() {
        let (flag, value) = match args[i].split_once('=') {
            Some((f, v)) => (f.to_owned(), Some(v.to_owned())),
            None => (args[i].clone(), args.get(i + 1).cloned()),
        };
        if !args[i].contains('=') {
            i += 1;
        }
        i += 1;
        let Some(value) = value else {
            usage(&format!("{flag} needs a value"));
        };
        builder = match flag.as_str() {
            "--schema" => builder.schema(value),
            "--table" => builder.table(value),
            _ => usage(&format!("unknown argument {flag:?}")),
        };
    }
    match builder.migration_sql() {
        Ok(sql) => println!("{sql}"),
        Err(e) => usage(&e.to_string()),
    }
}

fn usage(problem: &str) -> ! {
    eprintln!("c3-sql: {problem}\nusage: c3-sql [--schema NAME] [--table NAME]");
    std::process::exit(2);
}
