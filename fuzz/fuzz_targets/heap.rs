#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| helios_trace::fuzzing::heap(data));
