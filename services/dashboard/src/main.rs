//! `dashboard`: the Durable Task dashboard over any DTS endpoint (the local scheduler, or Azure
//! DTS with the worker's connection settings). The process is `dashboard::run`.

/// jemalloc rather than glibc's malloc: see the workspace manifest.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() {
    service_kit::run::main(&dashboard::settings::SOURCE, dashboard::run)
}
