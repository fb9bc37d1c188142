fn main() -> std::process::ExitCode {
    credfs::cli::main()
}
