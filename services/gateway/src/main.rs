//! `gateway`: the async HTTP API in front of DTS (or the local scheduler).
//!
//! Configuration: defaults, then an optional TOML file (`--config <path>` or `GATEWAY_CONFIG`),
//! then `GATEWAY__<KEY>` variables; the sample's `ENDPOINT` / `TASKHUB` and
//! `DURABLE_TASK_SCHEDULER_CONNECTION_STRING` as for the worker. Every key is in
//! `gateway::config::Settings`; the process is `gateway::run`.

/// jemalloc rather than glibc's malloc: see the workspace manifest.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    service_kit::run::main(&gateway::config::SOURCE, gateway::run)
}
