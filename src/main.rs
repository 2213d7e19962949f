//! The `weft` command-line tool. See `weft --help`.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of the system allocator: every envelope is a handful of small
/// allocations, and glibc's malloc took about a sixth of the CPU of `weft bench pubsub`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    // The TLS provider every HTTPS client of the CLI uses (reqwest is built without one).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Before the runtime: the OTLP exporter owns a blocking HTTP client.
    let telemetry = weft::telemetry::init(cli::log_filter(args.verbose), args.log_format.into());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            weft::telemetry::say_error(&format!("cannot start the async runtime: {e}"), None);
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(cli::run(args));
    drop(runtime);
    drop(telemetry); // flushes exported spans
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            weft::telemetry::say_error(&cli::one_line(&e), cli::hint(&e));
            ExitCode::FAILURE
        }
    }
}
