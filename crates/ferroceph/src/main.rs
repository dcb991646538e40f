#![deny(unsafe_code)]

use clap::Parser;
use ferroceph::cli::{normalize_go_flags, Cli, Command};

fn init_logging(json: bool) {
    use std::io::IsTerminal;
    use tracing_subscriber::EnvFilter;
    // FERROCEPH_LOG is a level (info, debug) or a full filter; the HTTP/2 stack stays quiet
    // unless named explicitly.
    let wanted = std::env::var("FERROCEPH_LOG").unwrap_or_else(|_| "info".to_string());
    let spec = if wanted.contains('=') {
        wanted
    } else {
        format!("{wanted},h2=warn,hyper=warn,hyper_util=warn,tower=warn,tonic=warn")
    };
    let filter = EnvFilter::try_new(&spec).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !json)
        .with_target(false);
    if json {
        builder.json().with_current_span(true).init();
    } else {
        builder.init();
    }
}

fn main() {
    ferroceph::sys::limit_malloc_arenas();
    let cli = Cli::parse_from(normalize_go_flags(std::env::args()));
    let command = match cli.command {
        Some(Command::Launch(args)) => std::process::exit(ferroceph::node::outlive::launch(args)),
        Some(Command::FuseExport(args)) => {
            // A process of its own, without the async runtime: it outlives the plugin.
            init_logging(std::env::var("FERROCEPH_LOG_FORMAT").is_ok_and(|f| f == "json"));
            std::process::exit(ferroceph::fuse_export::run(args));
        }
        other => other,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(64)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferroceph: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async move {
        match command {
            Some(Command::Client(args)) => ferroceph::client::run(args).await,
            Some(Command::Bench(args)) => ferroceph::bench::run(args).await,
            Some(Command::Doctor(args)) => ferroceph::doctor::run(args).await,
            Some(Command::FuseExport(_)) | Some(Command::Launch(_)) => 2,
            None => {
                init_logging(cli.serve.logformat == ferroceph::cli::LogFormat::Json);
                match ferroceph::driver::run(cli.serve).await {
                    Ok(()) => 0,
                    Err(e) => {
                        tracing::error!("{e:#}");
                        1
                    }
                }
            }
        }
    });
    std::process::exit(code);
}
