//! Keys and identifiers: validation and quoting never panic; a valid key is
//! a bare invalidation of itself.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    c3_core::fuzzing::key(data);
});
