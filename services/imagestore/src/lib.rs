//! `banger-imagestore` owns OCI images: registry pulls into the blob cache
//! under `$STATE/blobs`, layer flattening, and the ext4 root filesystems
//! under `$STATE/images`.

pub mod service;

pub use service::ImageStoreService;
