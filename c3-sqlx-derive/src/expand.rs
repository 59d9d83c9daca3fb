//! The generated `Cached` impl: SQL text fixed at compile time (identifiers
//! validated, then double-quoted) and the functions that bind values to it.

use proc_macro2::TokenStream;
use quote::quote;
use syn::DeriveInput;

use crate::attrs::{self, Column};

fn q(ident: &str) -> String {
    format!("\"{ident}\"")
}

fn duration(d: Option<std::time::Duration>) -> TokenStream {
    match d {
        Some(d) => {
            let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            quote!(::core::option::Option::Some(::core::time::Duration::from_millis(#ms)))
        }
        None => quote!(::core::option::Option::None),
    }
}

pub(crate) fn expand(input: &DeriveInput) -> syn::Result<TokenStream> {
    let (a, columns) = attrs::parse(input)?;
    let (keys, saved) = key_and_saved(&a, &columns);
    let sql = sql(&a, &columns, &keys, &saved);
    let written: Vec<&Column> = keys.iter().chain(saved.iter()).copied().collect();

    let name = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let KeyCode {
        ty: key_ty,
        expr: key_expr,
        parts: key_parts,
        bind: bind_key,
        bind_many: bind_keys,
    } = key_code(&keys);
    let written_idents: Vec<&syn::Ident> = written.iter().map(|c| &c.ident).collect();

    let krate = match &a.krate {
        Some(path) => quote!(#path),
        None => {
            let path = crate::krate::default_path();
            quote!(#path)
        }
    };
    let entity_sql = sql.tokens(&a, &keys);
    Ok(quote! {
        impl #impl_generics #krate::Cached for #name #ty_generics #where_clause {
            type Key = #key_ty;

            const ENTITY: #krate::Entity = {
                let (names, sql, lifetimes) = #entity_sql;
                #krate::__private::entity(names, sql, lifetimes)
            };

            fn key(&self) -> Self::Key {
                #key_expr
            }

            fn key_parts(key: &Self::Key) -> ::std::vec::Vec<::std::string::String> {
                #key_parts
            }

            fn bind_key<'q>(
                q: #krate::__private::PgQuery<'q>,
                key: &Self::Key,
            ) -> #krate::__private::PgQuery<'q> {
                #bind_key
            }

            fn bind_keys<'q>(
                q: #krate::__private::PgQuery<'q>,
                keys: &[Self::Key],
            ) -> #krate::__private::PgQuery<'q> {
                #bind_keys
            }

            fn bind_save<'q>(
                &self,
                q: #krate::__private::PgQuery<'q>,
            ) -> #krate::__private::PgQuery<'q> {
                q #(.bind(::core::clone::Clone::clone(&self.#written_idents)))*
            }
        }
    })
}

/// The entity's SQL, fixed at compile time.
struct Sql {
    table: String,
    namespace: String,
    select_by_key: String,
    select_by_keys: String,
    upsert: String,
    delete: String,
    /// The cache key as a SQL expression over `$ROW`, for triggers.
    trigger_key: String,
}

fn sql(a: &attrs::Attrs, columns: &[Column], keys: &[&Column], saved: &[&Column]) -> Sql {
    let table = match &a.schema {
        Some(s) => format!("{}.{}", q(&s.value), q(&a.table.value)),
        None => q(&a.table.value),
    };
    let namespace = a
        .namespace
        .as_ref()
        .map_or_else(|| a.table.value.clone(), |n| n.value.clone());
    let all_cols: Vec<String> = columns.iter().map(|c| q(&c.name)).collect();
    let select = format!("SELECT {} FROM {table}", all_cols.join(", "));
    let by_key: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} = ${}", q(&c.name), i + 1))
        .collect();
    let select_by_key = format!("{select} WHERE {}", by_key.join(" AND "));
    let select_by_keys = if keys.len() == 1 {
        format!("{select} WHERE {} = ANY($1)", q(&keys[0].name))
    } else {
        let tuple: Vec<String> = keys.iter().map(|c| q(&c.name)).collect();
        let params: Vec<String> = (1..=keys.len()).map(|i| format!("${i}")).collect();
        format!(
            "{select} WHERE ({}) IN (SELECT * FROM unnest({}))",
            tuple.join(", "),
            params.join(", ")
        )
    };
    let written: Vec<&Column> = keys.iter().chain(saved.iter()).copied().collect();
    let insert_cols: Vec<String> = written.iter().map(|c| q(&c.name)).collect();
    let params: Vec<String> = (1..=written.len()).map(|i| format!("${i}")).collect();
    let conflict: Vec<String> = keys.iter().map(|c| q(&c.name)).collect();
    let on_conflict = if saved.is_empty() {
        "DO NOTHING".to_owned()
    } else {
        let sets: Vec<String> = saved
            .iter()
            .map(|c| format!("{0} = EXCLUDED.{0}", q(&c.name)))
            .collect();
        format!("DO UPDATE SET {}", sets.join(", "))
    };
    let upsert = format!(
        "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT ({}) {on_conflict}",
        insert_cols.join(", "),
        params.join(", "),
        conflict.join(", ")
    );
    let delete = format!("DELETE FROM {table} WHERE {}", by_key.join(" AND "));
    // The cache key in SQL, for triggers: `$ROW` stands for OLD or NEW. The
    // escaping matches `c3_sqlx::key_part` exactly.
    let parts: Vec<String> = keys
        .iter()
        .map(|c| {
            format!(
                "replace(replace(($ROW.{})::text, '%', '%25'), ':', '%3A')",
                q(&c.name)
            )
        })
        .collect();
    let trigger_key = format!(
        "'{}:' || {}",
        namespace.replace('\'', "''"),
        parts.join(" || ':' || ")
    );

    Sql {
        table,
        namespace,
        select_by_key,
        select_by_keys,
        upsert,
        delete,
        trigger_key,
    }
}

impl Sql {
    /// The arguments of `__private::entity`: names, SQL text, lifetimes.
    fn tokens(&self, a: &attrs::Attrs, keys: &[&Column]) -> TokenStream {
        let Sql {
            table,
            namespace,
            select_by_key,
            select_by_keys,
            upsert,
            delete,
            trigger_key,
        } = self;
        let key_cols: Vec<&str> = keys.iter().map(|c| c.name.as_str()).collect();
        let (ttl, fail_safe, negative_ttl) = (
            duration(a.ttl),
            duration(a.fail_safe),
            duration(a.negative_ttl),
        );
        quote! {
            (
                (#namespace, #table, &[#(#key_cols),*] as &[&str]),
                [#select_by_key, #select_by_keys, #upsert, #delete, #trigger_key],
                [#ttl, #fail_safe, #negative_ttl],
            )
        }
    }
}

/// The generated code that handles the key: its type, how to read it from
/// `self`, its parts for the cache key, and how to bind one or many.
struct KeyCode {
    ty: TokenStream,
    expr: TokenStream,
    parts: TokenStream,
    bind: TokenStream,
    bind_many: TokenStream,
}

fn key_code(keys: &[&Column]) -> KeyCode {
    let key_tys: Vec<&syn::Type> = keys.iter().map(|c| &c.ty).collect();
    let key_idents: Vec<&syn::Ident> = keys.iter().map(|c| &c.ident).collect();
    let (ty, expr, parts, bind, bind_many) = if keys.len() == 1 {
        let (ty, id) = (key_tys[0], key_idents[0]);
        (
            quote!(#ty),
            quote!(::core::clone::Clone::clone(&self.#id)),
            quote!(::std::vec![::std::string::ToString::to_string(key)]),
            quote!(q.bind(::core::clone::Clone::clone(key))),
            quote!(q.bind(<[#ty]>::to_vec(keys))),
        )
    } else {
        let idx: Vec<syn::Index> = (0..keys.len()).map(syn::Index::from).collect();
        (
            quote!((#(#key_tys,)*)),
            quote!((#(::core::clone::Clone::clone(&self.#key_idents),)*)),
            quote!(::std::vec![#(::std::string::ToString::to_string(&key.#idx)),*]),
            quote!(q #(.bind(::core::clone::Clone::clone(&key.#idx)))*),
            quote!(q #(.bind(keys.iter().map(|k| ::core::clone::Clone::clone(&k.#idx)).collect::<::std::vec::Vec<#key_tys>>()))*),
        )
    };
    KeyCode {
        ty,
        expr,
        parts,
        bind,
        bind_many,
    }
}

/// The key columns, in the key's order, and the other columns `save` writes.
fn key_and_saved<'c>(
    a: &attrs::Attrs,
    columns: &'c [Column],
) -> (Vec<&'c Column>, Vec<&'c Column>) {
    let find = |name: &str| -> &Column {
        columns
            .iter()
            .find(|c| c.name == name)
            .expect("checked by attrs::parse")
    };
    let keys: Vec<&Column> = a.key.value.iter().map(|k| find(k)).collect();
    let saved: Vec<&Column> = match &a.save {
        Some(list) => list
            .value
            .iter()
            .filter(|c| !a.key.value.contains(c))
            .map(|c| find(c))
            .collect(),
        None => columns
            .iter()
            .filter(|c| !a.key.value.contains(&c.name))
            .collect(),
    };
    (keys, saved)
}
