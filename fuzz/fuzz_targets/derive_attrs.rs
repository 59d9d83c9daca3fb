//! `#[derive(Cached)]`: any Rust item text that parses as a derive input
//! either expands or yields a `syn::Error`, never a panic.
//!
//! A proc-macro crate exports only macros, so its parser is compiled in here
//! from its source files.
#![no_main]

#[path = "../../c3-sqlx-derive/src/attrs.rs"]
#[allow(dead_code)]
mod attrs;
#[path = "../../c3-sqlx-derive/src/expand.rs"]
mod expand;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(input) = syn::parse_str::<syn::DeriveInput>(text) {
        let _ = expand::expand(&input);
    }
});
