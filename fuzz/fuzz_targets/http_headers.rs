//! Cache-Control, Vary, Age and date headers of a request/response pair
//! through the HTTP layer's storability and variant-key logic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    c3_tower::cache::fuzzing::headers(data);
});
