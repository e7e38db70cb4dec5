fn main() -> std::process::ExitCode {
    helios_trace::cli::main()
}
