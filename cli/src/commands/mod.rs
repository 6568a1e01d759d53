//! One module per subcommand group.

pub mod doctor;
pub mod image;
pub mod kernel;
pub mod network;
pub mod services;
pub mod vm;
