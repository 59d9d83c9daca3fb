//! Compile-time behaviour of `#[derive(Cached)]`: what it accepts, and the
//! errors (with spans on the offending attribute) for what it does not.

#[test]
fn derive_expansion() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
