//! Notification payloads: never a panic; key lines survive re-packing.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    // PostgreSQL delivers payloads as text; anything else never reaches the parser.
    if let Ok(payload) = std::str::from_utf8(data) {
        c3_core::fuzzing::notification(payload);
    }
});
