//! `dashboard`: the Durable Task dashboard over any DTS endpoint (the local scheduler, or Azure
//! DTS with the worker's connection settings). The process is `dashboard::run`.

fn main() {
    service_kit::run::main(&dashboard::settings::SOURCE, dashboard::run)
}
