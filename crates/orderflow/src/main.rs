//! `orderflow`: see `orderflow --help`.

fn main() -> std::process::ExitCode {
    orderflow::main()
}
