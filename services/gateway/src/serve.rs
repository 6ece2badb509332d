//! The HTTP server: service-kit's, shared with every other listener of the project (see
//! `service_kit::http_server`).

pub use service_kit::http_server::*;
