//! The one TLS crypto provider of every banger process: rustls with *ring*.
//!
//! reqwest and oci-client are built with their `*-no-provider` rustls
//! features, so the large aws-lc C library (rustls' default provider) is
//! never compiled. In exchange a provider must be installed before the first
//! HTTP client is built, or reqwest panics ("No rustls crypto provider is
//! configured"). [`crate::telemetry::init`] does it for every process that
//! starts telemetry (all services, the CLI) before OTLP's HTTP exporter
//! builds its client; code that builds a `reqwest::Client` or an
//! `oci_client::Client` calls [`install_crypto_provider`] first as well, so
//! tests and library callers are covered too.

/// Installs *ring* as the process-wide rustls provider; idempotent and cheap.
pub fn install_crypto_provider() {
    // Err only means a provider is already installed (by an earlier call):
    // the first one stays, which is what every later caller wants.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_a_provider_once() {
        install_crypto_provider();
        install_crypto_provider();
        assert!(rustls::crypto::CryptoProvider::get_default().is_some());
    }
}
