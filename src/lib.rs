pub mod config;
pub mod error;
pub mod registry;
pub mod secret;
pub mod status;
pub mod store;
pub mod upload;
