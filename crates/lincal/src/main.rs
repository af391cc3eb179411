//! The `lincal` command line: argument parsing only; the commands live in the `lincal` library.

use clap::Parser;

fn main() {
    if let Err(error) = lincal::cli::run(lincal::cli::Cli::parse()) {
        eprintln!("error: {error:#}");
        std::process::exit(1);
    }
}
