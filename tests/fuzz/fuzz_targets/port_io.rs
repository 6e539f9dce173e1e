#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| herd_fuzz::run_target("port_io", data));
