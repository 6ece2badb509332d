//! Replay throughput of the executor on canned histories (criterion).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use durabletask::orchestration::execute;
use durabletask::proto as pb;
use durabletask::testing::HistoryBuilder;
use durabletask::{OrchestrationContext, Registry};

/// A sequential orchestration of `n` activities, fully replayed from history (3 events per activity).
fn sequential(n: i32) -> (Registry, pb::OrchestratorRequest, usize) {
    let mut r = Registry::new();
    r.add_orchestrator("seq", move |ctx: OrchestrationContext, _: ()| async move {
        let mut total = 0i64;
        for i in 0..n {
            total += ctx.call_activity::<_, i64>("step", &i).await?;
        }
        Ok(total)
    });
    let mut h = HistoryBuilder::new("bench");
    h.started("seq", None);
    for i in 0..n - 1 {
        h.task_scheduled(i, "step")
            .episode()
            .task_completed(i, Some("1"));
    }
    h.task_scheduled(n - 1, "step");
    let past = h.take();
    h.episode().task_completed(n - 1, Some("1"));
    let events = past.len() + h.events().len();
    let req = h.request(past, h.events());
    (r, req, events)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("replay");
    for n in [100, 333] {
        let (reg, req, events) = sequential(n);
        let orch = reg.orchestrator("seq").expect("registered");
        // Sanity: the replay must complete, or we would be timing an error path.
        let res = execute(orch.as_ref(), &req);
        assert!(matches!(
            res.status,
            durabletask::orchestration::ExecutionStatus::Completed(_)
        ));
        g.throughput(Throughput::Elements(events as u64));
        g.bench_function(format!("{n}_activities_{events}_events"), |b| {
            b.iter(|| execute(orch.as_ref(), &req))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
