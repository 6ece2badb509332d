//! The engine's entity tests.

use super::*;
use crate::engine::{Engine, EngineError, StreamFilter};

fn signal(e: &mut Engine, id: &str, op: &str) {
    e.signal_entity(
        "h",
        pb::SignalEntityRequest {
            instance_id: id.into(),
            name: op.into(),
            ..Default::default()
        },
    )
    .expect("signal");
}

fn operations(item: &pb::WorkItem) -> Vec<String> {
    let Some(pb::work_item::Request::EntityRequestV2(r)) = &item.request else {
        panic!("not an entity work item: {item:?}");
    };
    r.operation_requests
        .iter()
        .map(|e| match &e.event_type {
            Some(EventType::EntityOperationSignaled(s)) => s.operation.clone(),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn one_batch_at_a_time_in_order_and_a_stream_that_hands_one_back_gets_no_more() {
    let mut e = Engine::new(&["h".to_string()]);
    let any = StreamFilter::default();
    signal(&mut e, "@c@k", "a");
    signal(&mut e, "@c@k", "b");
    let first = e.take_entity("h", 1, &any).expect("work");
    assert_eq!(operations(&first), ["a", "b"]);
    // Held: nothing more for this entity until it completes, even with more queued.
    signal(&mut e, "@c@k", "c");
    assert!(e.take_entity("h", 2, &any).is_none());
    // Stream 1 cannot run entities: it hands the batch back, and is offered no more.
    e.abandon_entity(&first.completion_token).expect("abandon");
    assert!(e.take_entity("h", 1, &any).is_none());
    let again = e
        .take_entity("h", 2, &any)
        .expect("work for another stream");
    assert_eq!(operations(&again), ["a", "b", "c"]);
    // A result for the first two only: the third goes back in front.
    e.complete_entity(
        "h",
        pb::EntityBatchResult {
            results: vec![pb::OperationResult::default(); 2],
            entity_state: Some("2".into()),
            completion_token: again.completion_token.clone(),
            ..Default::default()
        },
    )
    .expect("complete");
    let rest = e.take_entity("h", 2, &any).expect("the rest");
    assert_eq!(operations(&rest), ["c"]);
    // The stale token of the first dispatch changes nothing.
    assert!(matches!(
        e.complete_entity(
            "h",
            pb::EntityBatchResult {
                completion_token: first.completion_token,
                ..Default::default()
            }
        ),
        Err(EngineError::NotFound(_))
    ));
    let got = e
        .get_entity(
            "h",
            &pb::GetEntityRequest {
                instance_id: "@c@k".into(),
                include_state: true,
            },
        )
        .expect("get");
    assert_eq!(
        got.entity.and_then(|m| m.serialized_state),
        Some("2".into())
    );
}

#[test]
fn signals_past_the_backlog_or_the_state_limit_are_refused_and_room_comes_back() {
    let mut e = Engine::new(&["h".to_string()]).with_limits(super::super::Limits {
        max_backlog: 3,
        ..Default::default()
    });
    let any = StreamFilter::default();
    for _ in 0..3 {
        signal(&mut e, "@c@k", "add");
    }
    let refused = e.signal_entity(
        "h",
        pb::SignalEntityRequest {
            instance_id: "@c@other".into(),
            name: "add".into(),
            ..Default::default()
        },
    );
    assert!(
        matches!(&refused, Err(EngineError::ResourceExhausted(m)) if m.contains("max_backlog")),
        "{refused:?}"
    );
    // Run them: the backlog empties and signals are taken again.
    let item = e.take_entity("h", 1, &any).expect("work");
    e.complete_entity(
        "h",
        pb::EntityBatchResult {
            results: vec![pb::OperationResult::default(); 3],
            entity_state: Some("3".into()),
            completion_token: item.completion_token,
            ..Default::default()
        },
    )
    .expect("complete");
    signal(&mut e, "@c@other", "add");

    // The state limit: big inputs fill it.
    let mut e = Engine::new(&["h".to_string()]).with_limits(super::super::Limits {
        max_state_bytes: 100_000,
        ..Default::default()
    });
    let big = |n: usize| pb::SignalEntityRequest {
        instance_id: format!("@c@{n}"),
        name: "set".into(),
        input: Some(format!("\"{}\"", "x".repeat(30_000))),
        ..Default::default()
    };
    let accepted = (0..10)
        .take_while(|n| e.signal_entity("h", big(*n)).is_ok())
        .count();
    assert!(
        (3..=4).contains(&accepted),
        "{accepted} signals of 30 KB under 100 KB"
    );
    assert!(e.state_bytes() >= 100_000);
}

#[test]
fn a_batch_of_large_operations_stays_under_the_byte_cap() {
    let mut e = Engine::new(&["h".to_string()]);
    for _ in 0..10 {
        e.signal_entity(
            "h",
            pb::SignalEntityRequest {
                instance_id: "@c@k".into(),
                name: "set".into(),
                input: Some(format!("\"{}\"", "x".repeat(1_000_000))),
                ..Default::default()
            },
        )
        .expect("signal");
    }
    let item = e
        .take_entity("h", 1, &StreamFilter::default())
        .expect("work");
    let ops = operations(&item).len();
    assert!(
        (1..=4).contains(&ops),
        "{ops} operations of 1 MB in one work item"
    );
    assert!(prost::Message::encoded_len(&item) < 5 * 1024 * 1024);
}

#[test]
fn an_entity_page_ends_at_the_byte_cap_with_a_token() {
    let mut e = Engine::new(&["h".to_string()]);
    let any = StreamFilter::default();
    for i in 0..6 {
        signal(&mut e, &format!("@c@{i}"), "set");
    }
    while let Some(item) = e.take_entity("h", 1, &any) {
        e.complete_entity(
            "h",
            pb::EntityBatchResult {
                results: vec![pb::OperationResult::default()],
                entity_state: Some(format!("\"{}\"", "x".repeat(1_000_000))),
                completion_token: item.completion_token,
                ..Default::default()
            },
        )
        .expect("complete");
    }
    let mut query = pb::EntityQuery {
        include_state: true,
        ..Default::default()
    };
    let mut seen = 0;
    let mut pages = 0;
    loop {
        let page = e.query_entities("h", &query).expect("query");
        let bytes: usize = page.entities.iter().map(prost::Message::encoded_len).sum();
        assert!(bytes < 6 * 1024 * 1024, "a page of {bytes} bytes");
        seen += page.entities.len();
        pages += 1;
        match page.continuation_token {
            Some(t) => query.continuation_token = Some(t),
            None => break,
        }
    }
    assert_eq!(seen, 6);
    assert!(pages >= 2, "six 1 MB states in {pages} page(s)");
}

#[test]
fn entity_filters_take_only_their_names() {
    let mut e = Engine::new(&["h".to_string()]);
    signal(&mut e, "@alpha@1", "x");
    signal(&mut e, "@beta@1", "x");
    let only_beta = StreamFilter::from_request(Some(&pb::WorkItemFilters {
        entities: vec![pb::EntityFilter {
            name: "beta".into(),
        }],
        ..Default::default()
    }));
    let item = e.take_entity("h", 1, &only_beta).expect("beta");
    let Some(pb::work_item::Request::EntityRequestV2(r)) = item.request else {
        panic!("entity work item");
    };
    assert_eq!(r.instance_id, "@beta@1");
    assert!(e.take_entity("h", 1, &only_beta).is_none());
    // Alpha waited in its place for a stream that takes it.
    assert!(e.take_entity("h", 2, &StreamFilter::default()).is_some());
}

#[test]
fn entity_ids_are_at_name_at_key_with_a_lower_case_name() {
    assert_eq!(entity_name("@counter@a"), Ok("counter"));
    assert_eq!(entity_name("@counter@"), Ok("counter"));
    for bad in [
        "counter@a",
        "@counter",
        "@@a",
        "@Counter@a",
        "@c\u{7f}@a",
        "",
    ] {
        assert!(
            matches!(entity_name(bad), Err(EngineError::InvalidArgument(_))),
            "{bad:?}"
        );
    }
    let long = format!("@n@{}", "k".repeat(MAX_ENTITY_ID_BYTES));
    assert!(entity_name(&long).is_err());
}
