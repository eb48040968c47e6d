//! The `configwatch` binary: parses the command line and runs it (see `cli`).

use clap::Parser;
use configwatch::cli::{self, Cli};

#[tokio::main]
async fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { cli::EXIT_USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    if let Err(failure) = cli::run(cli).await {
        eprintln!("error: {}", failure.message);
        std::process::exit(failure.code);
    }
}
