//! The `trainyard` command: a thin layer that parses arguments, calls the
//! library and prints results (human tables, or JSON with `--json`).

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
