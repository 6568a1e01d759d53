//! `banger-kernelcat` owns the guest kernels: the local store under
//! `$STATE/kernels`, the catalog, verified pulls and imports.

pub mod service;

pub use service::KernelCatService;
