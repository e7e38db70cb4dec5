#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| helios_trace::fuzzing::python(data));
