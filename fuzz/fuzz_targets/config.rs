#![no_main]
//! Fuzz target: see `xlb_tools::fuzzing::config`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| xlb_tools::fuzzing::config(data));
