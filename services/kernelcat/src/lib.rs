//! `banger-kernelcat` owns the guest kernels: the local store under
//! `$STATE/kernels`, the catalog (embedded plus an optional remote one),
//! verified pulls over HTTP(S) or from an OCI registry, and imports.
//!
//! Layers, top-down: [`store`] (records on disk, holds), [`bundle`] (safe
//! unpacking), [`catalog`], [`pull`], [`import`]; [`service`] adapts them to
//! the gRPC API; `main.rs` only serves it.

#![forbid(unsafe_code)]

pub mod bundle;
pub mod catalog;
pub mod config;
pub mod error;
pub mod import;
pub mod pull;
pub mod service;
pub mod store;

pub use config::KernelCatConfig;
pub use error::Error;
pub use service::KernelCatService;
