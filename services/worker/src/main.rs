//! `worker`: pulls work items from DTS (or the local scheduler) and runs the async HTTP API's
//! orchestration and activity.
//!
//! Configuration: defaults, then an optional TOML file (`--config <path>` or `WORKER_CONFIG`),
//! then `WORKER__<KEY>` variables. The original sample's `ENDPOINT` / `TASKHUB` work as there,
//! and `DURABLE_TASK_SCHEDULER_CONNECTION_STRING` (or `WORKER__CONNECTION_STRING`) takes a DTS
//! connection string. The process is `worker::run`; `worker versions` is `worker::versions`.

/// jemalloc rather than glibc's malloc: see the workspace manifest.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("versions") {
        let outcome =
            service_kit::run::runtime().block_on(worker::versions::command(args[1..].to_vec()));
        match outcome {
            Ok(code) => std::process::exit(code),
            Err(e) => service_kit::run::exit("worker", Err(e)),
        }
    }
    service_kit::run::main(&worker::settings::SOURCE, worker::run)
}
