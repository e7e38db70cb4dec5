// The dependencies are the library's: this target only calls it, and the lint, which looks at
// one target at a time, would list every one of them (rust-lang/rust#95513).
#![allow(unused_crate_dependencies, reason = "the binary only calls the library, which uses them")]

fn main() -> std::process::ExitCode {
    helios_trace::cli::main()
}
