//! `local-scheduler`: a Durable Task Scheduler-compatible gRPC server with an embedded store.
//!
//! Configuration: built-in defaults, then an optional TOML file (`--config <path>` or
//! `LOCAL_SCHEDULER_CONFIG`), then environment variables `LOCAL_SCHEDULER__<KEY>` (and
//! `DTS_TASK_HUB_NAMES=a,b`, as the DTS emulator reads it). The process is
//! `local_scheduler::run`.

/// jemalloc rather than glibc's malloc: see the workspace manifest.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    service_kit::run::main(&local_scheduler::settings::SOURCE, local_scheduler::run)
}
