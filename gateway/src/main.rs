use clap::Parser;

// mimalloc: the proxy path allocates per request and per chunk; glibc's
// malloc showed up high in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Logs (one access line per request) are written by a background
    // thread, off the proxy threads; lossless, so a burst blocks rather
    // than drops lines.
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    tracing_subscriber::fmt()
        .with_writer(writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = gateway::cli::run(gateway::cli::Cli::parse());
    drop(guard);
    if let Err(e) = result {
        eprintln!("gateway: error: {e:#}");
        std::process::exit(1);
    }
}
