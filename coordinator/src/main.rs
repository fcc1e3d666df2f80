//! `stampede`: parse the command line and hand it to the library.

use stampede_coordinator::cli::{self, Cli};

fn main() -> std::process::ExitCode {
    let cli = Cli::parse_checked();
    // Before the runtime starts its threads: a descriptor table grown later,
    // in a threaded process, stalls the thread that needed it for an RCU
    // grace period (stampede_agent::open_files).
    stampede_agent::open_files::prepare_process();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::from(cli::EXIT_ERROR as u8);
        }
    };
    let code = rt.block_on(async {
        // `run` and `validate` talk to a person through progress and summary;
        // routine log lines would bury them.
        let level = match cli.command {
            cli::Command::Run(_) | cli::Command::Validate { .. } | cli::Command::Certs(_) => "warn",
            _ => "info",
        };
        let _telemetry = match stampede_common::telemetry::init("stampede", level, cli.otlp_endpoint.clone()) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("error: {e}");
                return cli::EXIT_ERROR;
            }
        };
        cli::main(cli).await
    });
    std::process::ExitCode::from(code as u8)
}
