//! SQL identifiers — the schema, table and channel names c3 is configured
//! with: validated once, then quoted wherever they are spelled into SQL.

/// A validated SQL identifier (schema, table or channel name).
///
/// Only `[a-z_][a-z0-9_]*` up to `max` bytes is accepted. That is stricter than
/// PostgreSQL needs, but it means the name reads the same quoted and unquoted,
/// in `LISTEN` and in `pg_notify('…')`, so no case-folding surprises.
pub(crate) fn validate_ident(what: &str, name: &str, max: usize) -> Result<(), String> {
    let ok_first = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_');
    let ok_rest = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !ok_first || !ok_rest || name.len() > max {
        return Err(format!(
            "{what} name {name:?} is not a valid identifier: use 1 to {max} characters from [a-z0-9_], not starting with a digit"
        ));
    }
    Ok(())
}

/// Quotes a validated identifier. Validation already excludes `"`, so this
/// cannot be broken out of; quoting still keeps reserved words usable.
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{name}\"")
}

/// `"schema"."name"`: a validated name, qualified and quoted.
pub(crate) fn qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers() {
        assert!(validate_ident("table", "cache_data", 40).is_ok());
        assert!(validate_ident("table", "_x1", 40).is_ok());
        for bad in ["", "1abc", "Cache", "a-b", "a\"b", "x; drop table y", "a b"] {
            assert!(validate_ident("table", bad, 40).is_err(), "{bad}");
        }
        assert!(validate_ident("table", &"a".repeat(41), 40).is_err());
        assert_eq!(quote_ident("t"), "\"t\"");
    }
}
