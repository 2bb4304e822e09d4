//! Tracing set-up for the binaries: `RUST_LOG` filters, default `info`.

/// Installs a formatting subscriber writing to stderr. Safe to call twice.
pub fn init(service: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
    tracing::debug!(service, "tracing ready");
}
