// mimalloc: per-thread free lists and no arena locks; measured in
// BENCHMARKS.md against the system allocator
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sekisho::cli::main()
}
