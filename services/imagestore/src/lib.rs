//! `banger-imagestore` owns OCI images: registry pulls into the blob cache
//! under `$STATE/blobs`, layer flattening, and the ext4 root filesystems
//! under `$STATE/images` (both decided by `banger_proto::config::Paths`:
//! `blobs()` and `state(Service::ImageStore)`).

pub mod blobs;
pub mod config;
pub mod error;
pub mod ext4;
pub mod ext4w;
pub mod flatten;
pub mod guest;
pub mod import;
pub mod privs;
pub mod reference;
pub mod registry;
pub mod service;
pub mod store;
pub mod token;

pub use error::Error;
pub use service::ImageStoreService;
