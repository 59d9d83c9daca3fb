//! `#[c3(...)]` and the columns behind the struct's fields.

use std::time::Duration;

use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, LitStr};

/// A value from `#[c3(...)]`, with the literal it came from (for error spans).
pub(crate) struct Located<T> {
    pub(crate) value: T,
    pub(crate) lit: LitStr,
}

/// Everything `#[c3(...)]` says.
pub(crate) struct Attrs {
    pub(crate) table: Located<String>,
    pub(crate) schema: Option<Located<String>>,
    pub(crate) key: Located<Vec<String>>,
    pub(crate) namespace: Option<Located<String>>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) fail_safe: Option<Duration>,
    pub(crate) negative_ttl: Option<Duration>,
    pub(crate) save: Option<Located<Vec<String>>>,
    /// Where c3-sqlx is, for code that reaches it through the `c3` facade
    /// (`crate = "c3::sqlx"`); `::c3_sqlx` by default.
    pub(crate) krate: Option<syn::Path>,
}

/// One field and its column.
pub(crate) struct Column {
    pub(crate) ident: syn::Ident,
    pub(crate) ty: syn::Type,
    pub(crate) name: String,
}

/// A PostgreSQL identifier c3 will quote: letters, digits, `_`, at most 63
/// bytes, not starting with a digit. Anything else is refused rather than
/// escaped, so generated SQL never carries surprising names.
pub(crate) fn check_ident(what: &str, name: &str, lit: &LitStr) -> syn::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(syn::Error::new(
            lit.span(),
            format!(
                "{what} {name:?} is not a valid identifier (letters, digits and `_`, at most 63 bytes)"
            ),
        ))
    }
}

/// `500ms`, `30s`, `10m`, `2h`, `1d`.
pub(crate) fn parse_duration(lit: &LitStr) -> syn::Result<Duration> {
    let s = lit.value();
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let bad = || {
        syn::Error::new(
            lit.span(),
            format!(
                "invalid duration {s:?}: expected a number and a unit, e.g. \"500ms\", \"30s\", \"10m\", \"2h\", \"1d\""
            ),
        )
    };
    let n: u64 = n.parse().map_err(|_| bad())?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => None,
    }
    .ok_or_else(bad)?;
    Ok(Duration::from_millis(ms))
}

fn list(lit: &LitStr) -> Vec<String> {
    lit.value()
        .split(',')
        .map(|c| c.trim().to_owned())
        .filter(|c| !c.is_empty())
        .collect()
}

/// `#[c3(...)]` as written, before the required parts are checked.
#[derive(Default)]
struct Raw {
    table: Option<Located<String>>,
    schema: Option<Located<String>>,
    key: Option<Located<Vec<String>>>,
    namespace: Option<Located<String>>,
    ttl: Option<Duration>,
    fail_safe: Option<Duration>,
    negative_ttl: Option<Duration>,
    save: Option<Located<Vec<String>>>,
    krate: Option<syn::Path>,
}

impl Raw {
    /// Reads one `#[c3(...)]` attribute; a later value replaces an earlier one.
    fn read(&mut self, attr: &syn::Attribute) -> syn::Result<()> {
        attr.parse_nested_meta(|meta| {
            let lit: LitStr = meta.value()?.parse()?;
            let text = |lit: &LitStr| Located {
                value: lit.value(),
                lit: lit.clone(),
            };
            let names = |lit: LitStr| Located {
                value: list(&lit),
                lit,
            };
            let p = &meta.path;
            if p.is_ident("table") {
                self.table = Some(text(&lit));
            } else if p.is_ident("schema") {
                self.schema = Some(text(&lit));
            } else if p.is_ident("key") {
                self.key = Some(names(lit));
            } else if p.is_ident("namespace") {
                self.namespace = Some(text(&lit));
            } else if p.is_ident("ttl") {
                self.ttl = Some(parse_duration(&lit)?);
            } else if p.is_ident("fail_safe") {
                self.fail_safe = Some(parse_duration(&lit)?);
            } else if p.is_ident("negative_ttl") {
                self.negative_ttl = Some(parse_duration(&lit)?);
            } else if p.is_ident("crate") {
                let mut path: syn::Path = lit.parse()?;
                // Always from the root, wherever the derive is used.
                path.leading_colon = Some(Default::default());
                self.krate = Some(path);
            } else if p.is_ident("save") {
                self.save = Some(names(lit));
            } else {
                return Err(meta.error(
                    "unknown c3 attribute; expected one of: table, schema, key, namespace, ttl, fail_safe, negative_ttl, save, crate",
                ));
            }
            Ok(())
        })
    }
}

pub(crate) fn parse(input: &DeriveInput) -> syn::Result<(Attrs, Vec<Column>)> {
    let mut raw = Raw::default();
    let mut seen: Option<&syn::Attribute> = None;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("c3")) {
        seen = Some(attr);
        raw.read(attr)?;
    }
    let Some(here) = seen else {
        return Err(syn::Error::new(
            input.ident.span(),
            "missing #[c3(table = \"...\", key = \"...\")] on a Cached struct",
        ));
    };
    let table = raw.table.ok_or_else(|| {
        syn::Error::new_spanned(
            here,
            "missing `table` in #[c3(...)]: e.g. #[c3(table = \"users\", key = \"id\")]",
        )
    })?;
    let key = raw.key.ok_or_else(|| {
        syn::Error::new_spanned(
            here,
            "missing `key` in #[c3(...)]: name the key column(s), e.g. key = \"id\"",
        )
    })?;
    if key.value.is_empty() {
        return Err(syn::Error::new(key.lit.span(), "`key` names no column"));
    }
    check_ident("table", &table.value, &table.lit)?;
    if let Some(s) = &raw.schema {
        check_ident("schema", &s.value, &s.lit)?;
    }
    if let Some(ns) = &raw.namespace
        && (ns.value.is_empty() || ns.value.chars().any(char::is_control))
    {
        return Err(syn::Error::new(
            ns.lit.span(),
            "namespace must be non-empty text without control characters",
        ));
    }
    let columns = columns(input)?;
    for named in [Some(&key), raw.save.as_ref()].into_iter().flatten() {
        known_columns(named, &columns)?;
    }
    Ok((
        Attrs {
            table,
            schema: raw.schema,
            key,
            namespace: raw.namespace,
            ttl: raw.ttl,
            fail_safe: raw.fail_safe,
            negative_ttl: raw.negative_ttl,
            save: raw.save,
            krate: raw.krate,
        },
        columns,
    ))
}

/// Every name in `named` is one of the struct's columns.
fn known_columns(named: &Located<Vec<String>>, columns: &[Column]) -> syn::Result<()> {
    for name in &named.value {
        if !columns.iter().any(|c| c.name == *name) {
            let names: Vec<&str> = columns.iter().map(|c| c.name.as_str()).collect();
            return Err(syn::Error::new(
                named.lit.span(),
                format!(
                    "unknown column {name:?}; the struct's columns are: {}",
                    names.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

fn columns(input: &DeriveInput) -> syn::Result<Vec<Column>> {
    let Data::Struct(data) = &input.data else {
        return Err(syn::Error::new(
            input.ident.span(),
            "Cached can only be derived for a struct with named fields",
        ));
    };
    let Fields::Named(fields) = &data.fields else {
        return Err(syn::Error::new(
            data.fields.span(),
            "Cached can only be derived for a struct with named fields",
        ));
    };
    let mut out = Vec::new();
    for f in &fields.named {
        let ident = f.ident.clone().expect("named field");
        let mut name = ident.to_string().trim_start_matches("r#").to_owned();
        let mut skip = false;
        for attr in f.attrs.iter().filter(|a| a.path().is_ident("sqlx")) {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("rename") {
                    let lit: LitStr = meta.value()?.parse()?;
                    check_ident("column", &lit.value(), &lit)?;
                    name = lit.value();
                } else if meta.path.is_ident("skip") {
                    skip = true;
                } else if meta.input.peek(syn::Token![=]) {
                    let _: syn::Expr = meta.value()?.parse()?;
                } else if meta.input.peek(syn::token::Paren) {
                    let _content;
                    syn::parenthesized!(_content in meta.input);
                }
                Ok(())
            })?;
        }
        if skip {
            continue;
        }
        let lit = LitStr::new(&name, ident.span());
        check_ident("column", &name, &lit)?;
        out.push(Column {
            ident,
            ty: f.ty.clone(),
            name,
        });
    }
    Ok(out)
}

/// The attribute parser against arbitrary text: no panic, durations only
/// from the documented forms, identifiers only from the safe alphabet.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    fn lit(s: &str) -> LitStr {
        LitStr::new(s, proc_macro2::Span::call_site())
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in any::<String>()) {
            let _ = parse_duration(&lit(&s));
            let _ = check_ident("table", &s, &lit(&s));
            let _ = list(&lit(&s));
        }

        #[test]
        fn identifiers_from_the_safe_alphabet_are_accepted(s in "[A-Za-z_][A-Za-z0-9_]{0,62}") {
            prop_assert!(check_ident("table", &s, &lit(&s)).is_ok(), "{s:?} refused");
        }

        #[test]
        fn anything_that_would_need_escaping_is_refused(
            head in "[A-Za-z_]{0,10}",
            bad in prop::sample::select(vec!['"', '\'', ' ', '-', ';', '.', '\\', '\0', 'é', '\u{202e}']),
            tail in "[A-Za-z0-9_]{0,10}",
        ) {
            let s = format!("{head}{bad}{tail}");
            prop_assert!(check_ident("table", &s, &lit(&s)).is_err(), "{s:?} accepted");
        }

        #[test]
        fn too_long_empty_or_digit_first_is_refused(len in 64usize..200, d in 0u32..10) {
            let long = "a".repeat(len);
            prop_assert!(check_ident("table", &long, &lit(&long)).is_err());
            prop_assert!(check_ident("table", "", &lit("")).is_err());
            let digit = format!("{d}abc");
            prop_assert!(check_ident("table", &digit, &lit(&digit)).is_err());
        }

        #[test]
        fn documented_durations_parse(n in 0u64..1_000_000, unit in prop::sample::select(vec![("ms", 1u64), ("s", 1000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)])) {
            let d = parse_duration(&lit(&format!("{n}{}", unit.0))).expect("documented form");
            prop_assert_eq!(d.as_millis(), u128::from(n * unit.1));
        }
    }
}
