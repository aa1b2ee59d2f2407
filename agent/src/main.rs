use clap::Parser;

// mimalloc: the proxy path allocates per request and per chunk; glibc's
// malloc showed up high in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    match agent::cli::run(agent::cli::Cli::parse()) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("agent: error: {e:#}");
            std::process::exit(1);
        }
    }
}
