//! libFuzzer target: `strata_fuzz::pointer` (see there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| strata_fuzz::pointer(data));
