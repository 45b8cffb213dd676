#![no_main]
//! Fuzz target: see `xlb_tools::fuzzing::packet_pipeline`.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| xlb_tools::fuzzing::packet_pipeline(data));
