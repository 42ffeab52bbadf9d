//! libFuzzer target: the same properties as `abi/tests/parse_props.rs` (parser == reference
//! classifier, `ip_len` claimed and inside the frame, truncation and padding behaviour), on
//! whatever bytes the fuzzer comes up with.
#![no_main]

#[path = "../../abi/tests/reference/mod.rs"]
mod reference;

libfuzzer_sys::fuzz_target!(|frame: &[u8]| {
    if let Err(e) = reference::check(frame) {
        panic!("{e}\nframe {frame:02x?}");
    }
});
