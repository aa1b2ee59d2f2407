use clap::Parser;

// mimalloc: the proxy path allocates per request and per chunk; glibc's
// malloc showed up high in profiles.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Logging starts once the command's config is read (`cli::run`).
    if let Err(e) = gateway::cli::run(gateway::cli::Cli::parse()) {
        eprintln!("gateway: error: {e:#}");
        std::process::exit(1);
    }
}
