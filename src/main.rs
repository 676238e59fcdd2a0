fn main() -> std::process::ExitCode {
    sekisho::cli::main()
}
