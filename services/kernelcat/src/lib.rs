//! `banger-kernelcat` owns the guest kernels: the local store under
//! `$STATE/kernels`, the catalog (embedded plus an optional remote one),
//! verified pulls over HTTP(S) or from an OCI registry, and imports.
//!
//! Layers, top-down: [`store`] (records on disk, holds), [`bundle`] (safe
//! unpacking), [`catalog`], [`pull`], [`import`]; [`service`] adapts them to
//! the gRPC API; `main.rs` only serves it. Debian-archive entries go
//! through [`debian`] (the pull), [`archive`] (the signed chain), [`deb`]
//! (the package's kernel, config and modules) and [`initramfs`].

#![forbid(unsafe_code)]

pub mod archive;
pub mod bundle;
pub mod catalog;
pub mod config;
pub mod deb;
pub mod debian;
pub mod error;
pub mod import;
pub mod initramfs;
pub mod pull;
pub mod service;
pub mod store;

pub use config::KernelCatConfig;
pub use error::Error;
pub use service::KernelCatService;
