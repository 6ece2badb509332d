//! Runs a worker and a client against any DTS endpoint and prints one orchestration's result.
//!
//! Configuration, as in the original sample: `ENDPOINT` (default `http://localhost:8080`) and
//! `TASKHUB` (default `default`), or a full `DURABLE_TASK_SCHEDULER_CONNECTION_STRING`.

use std::time::Duration;

use durabletask::{
    ActivityContext, Client, Connection, ConnectionOptions, OrchestrationContext, Registry,
    StartOptions, Worker, WorkerOptions,
};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let options = match std::env::var("DURABLE_TASK_SCHEDULER_CONNECTION_STRING") {
        Ok(cs) => ConnectionOptions::from_connection_string(&cs)?,
        Err(_) => ConnectionOptions::new(
            &std::env::var("ENDPOINT").unwrap_or_else(|_| "http://localhost:8080".into()),
            &std::env::var("TASKHUB").unwrap_or_else(|_| "default".into()),
        )?,
    };
    println!(
        "connecting to {} (task hub {})",
        options.endpoint, options.taskhub
    );
    let conn = Connection::connect(options).await?;

    let mut registry = Registry::new();
    registry.add_activity(
        "say_hello",
        |ctx: ActivityContext, city: String| async move {
            Ok(format!(
                "Hello {city}! (task {} of {})",
                ctx.task_id(),
                ctx.orchestration_id()
            ))
        },
    );
    registry.add_orchestrator(
        "hello_cities",
        |ctx: OrchestrationContext, cities: Vec<String>| async move {
            let mut greetings = Vec::new();
            for city in cities {
                greetings.push(ctx.call_activity::<_, String>("say_hello", &city).await?);
            }
            Ok(greetings)
        },
    );

    let stop = CancellationToken::new();
    let worker =
        tokio::spawn(Worker::new(&conn, registry, WorkerOptions::default()).run(stop.clone()));

    let client = Client::new(&conn);
    let id = client
        .schedule_new_orchestration(
            "hello_cities",
            &["Tokyo", "Seattle", "London"],
            StartOptions::default(),
        )
        .await?;
    println!("started orchestration {id}");
    let done = client
        .wait_for_instance_completion(&id, true, Duration::from_secs(60))
        .await?
        .ok_or_else(|| anyhow::anyhow!("instance {id} disappeared"))?;
    println!("status: {}", done.runtime_status);
    println!("output: {}", done.serialized_output.unwrap_or_default());

    stop.cancel();
    worker.await??;
    conn.close();
    Ok(())
}
