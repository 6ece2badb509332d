//! The dashboard's views against the real binaries (local scheduler, worker, gateway,
//! dashboard), in real headless Chromium driven over the DevTools protocol. The screenshots the
//! README shows are taken here (`make screenshots` writes them to `docs/screenshots`).

mod common;

use common::{in_order, png_size, screenshots, start, status, system};
use durabletask::{
    Client, Connection, ConnectionOptions, EntityContext, EntityId, Registry, StartOptions, Worker,
    WorkerOptions,
};
use serde_json::json;
use test_support::browser::Tab;
use test_support::http::request;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_shows_in_the_list_and_its_page_tells_its_story_in_chromium() {
    let s = system(&[]).await;
    let id = start(s.gateway, "Ada", 2).await;
    let running = start(s.gateway, "Grace", 120).await;
    let canceled = start(s.gateway, "Edsger", 120).await;
    let (code, _, body) = request(
        s.gateway,
        "POST",
        &format!("/api/operations/{canceled}/cancel"),
        &[],
        "",
    )
    .await;
    assert!(code < 300, "{code} {body}");
    for op in [&id, &canceled] {
        status(s.gateway, op, 30).await.expect("status");
    }
    assert_eq!(
        status(s.gateway, &id, 0).await.expect("status")["status"],
        "Succeeded"
    );

    let mut tab = Tab::open().await;
    tab.goto(&s.page("/?paused=1")).await;
    for op in [&id, &running, &canceled] {
        let listed = tab
            .eval(&format!(
                "document.querySelector('tr[data-instance=\"{op}\"]') !== null"
            ))
            .await;
        assert_eq!(listed, true, "{op} not listed:\n{}", tab.text().await);
    }
    // Counts over every instance, one per status.
    let counts = tab
        .eval("[...document.querySelectorAll('nav.counts [data-count]')].map(a => a.textContent.trim()).join('|')")
        .await;
    let counts = counts.as_str().expect("counts");
    for expected in ["All: 3", "Completed: 1", "Running: 1", "Terminated: 1"] {
        assert!(counts.contains(expected), "{expected} not in {counts}");
    }
    let shots = screenshots();
    let list_png = tab.screenshot(&shots.join("instances.png"), None).await;
    tab.color_scheme("dark").await;
    let dark_png = tab
        .screenshot(&shots.join("instances-dark.png"), None)
        .await;
    tab.color_scheme("light").await;
    assert!(png_size(&list_png).0 >= 1_000 && png_size(&dark_png).0 >= 1_000);
    assert_ne!(list_png, dark_png, "dark mode changed nothing");

    // Clicking the row's link opens the instance.
    tab.click_and_load(&format!("tr[data-instance=\"{id}\"] a"))
        .await;
    assert!(tab.url().await.ends_with(&format!("/instances/{id}")));
    let kinds = tab
        .eval("[...document.querySelectorAll('table.history tr[data-kind]')].map(r => r.dataset.kind).join(' ')")
        .await;
    let kinds = kinds.as_str().expect("kinds");
    assert!(
        in_order(
            kinds,
            &[
                "ExecutionStarted",
                "TaskScheduled",
                "TaskCompleted",
                "ExecutionCompleted"
            ]
        ),
        "history out of order: {kinds}"
    );
    let shown_status = tab
        .eval("document.querySelector('[data-status]').dataset.status")
        .await;
    assert_eq!(shown_status, "Completed");
    // The timeline draws the activity as a bar; the sequence diagram its call and its result.
    let bar = tab
        .eval("document.querySelector('svg[aria-label=\"Timeline\"] [data-kind=\"activity\"] rect, svg[aria-label=\"Timeline\"] rect[data-kind=\"activity\"]')?.getBBox().width ?? 0")
        .await;
    assert!(bar.as_f64().unwrap_or(0.0) > 0.0, "no activity bar: {bar}");
    let messages = tab
        .eval("[...document.querySelectorAll('svg[aria-label=\"Sequence diagram\"] [data-message]')].map(m => m.dataset.message).join(' ')")
        .await;
    assert!(
        in_order(
            messages.as_str().expect("messages"),
            &[
                "ExecutionStarted",
                "TaskScheduled",
                "TaskCompleted",
                "ExecutionCompleted"
            ]
        ),
        "{messages}"
    );
    let output = tab
        .eval("document.querySelector('section[aria-label=\"Output\"]').innerText")
        .await;
    assert!(output.as_str().expect("output").contains("Ada"), "{output}");
    // A payload is collapsed until opened.
    tab.click("table.history details summary").await;
    let open = tab
        .eval("document.querySelector('table.history details').open")
        .await;
    assert_eq!(open, true);

    for (file, selector) in [
        ("instance.png", None),
        ("timeline.png", Some("svg[aria-label=\"Timeline\"]")),
        ("sequence.png", Some("svg[aria-label=\"Sequence diagram\"]")),
        ("history.png", Some("table.history")),
        ("input-output.png", Some("div.payloads")),
    ] {
        let png = tab.screenshot(&shots.join(file), selector).await;
        let (w, h) = png_size(&png);
        assert!(w >= 200 && h >= 40, "{file}: {w}x{h}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_name_filter_searches_past_one_scheduler_page_and_counts_cover_every_instance() {
    let s = system(&[("DASHBOARD__PAGE_SIZE", "5".into())]).await;
    let conn = Connection::connect(ConnectionOptions::new(&s.endpoint, "default").expect("opts"))
        .await
        .expect("connect");
    let client = Client::new(&conn);
    // No worker knows these names (the worker fails them). Three needles among the first 60 rows,
    // three more after 120; the name search reads 20 rows per query.
    let mut needles = Vec::new();
    for i in 0..200 {
        let name = if matches!(i, 7 | 33 | 59 | 121 | 150 | 199) {
            "needle"
        } else {
            "hay"
        };
        let id = client
            .schedule_new_orchestration(name, &json!(i), StartOptions::default())
            .await
            .expect("start");
        if name == "needle" {
            needles.push(id);
        }
    }
    let mut tab = Tab::open().await;
    tab.goto(&s.page("/?paused=1")).await;
    let rows = tab
        .eval("document.querySelectorAll('tr[data-instance]').length")
        .await;
    assert_eq!(rows, 5, "one page of 5");
    let all = tab
        .eval("document.querySelector('[data-count=\"All\"]').textContent.trim()")
        .await;
    assert_eq!(all, "All: 200", "counts cover every instance, not the page");

    // Filter by name in the form, as a user does.
    tab.click("input[name=name]").await;
    tab.type_text("needle").await;
    tab.click_and_load("form.filters button[type=submit]").await;
    let listed = tab
        .eval("[...document.querySelectorAll('tr[data-instance]')].map(r => r.dataset.instance)")
        .await;
    let listed: Vec<String> = serde_json::from_value(listed).expect("ids");
    assert!(
        listed.len() >= 5,
        "the search stopped at one scheduler page: {listed:?}"
    );
    let names = tab
        .eval("[...document.querySelectorAll('tr[data-instance] td:nth-child(2)')].every(td => td.textContent === 'needle')")
        .await;
    assert_eq!(names, true, "another name listed");
    let mut seen = listed.clone();
    // The rest come on the next pages.
    while tab
        .eval("document.querySelector('a[rel=next]') !== null")
        .await
        == true
    {
        tab.click_and_load("a[rel=next]").await;
        let more = tab
            .eval(
                "[...document.querySelectorAll('tr[data-instance]')].map(r => r.dataset.instance)",
            )
            .await;
        seen.extend(serde_json::from_value::<Vec<String>>(more).expect("ids"));
    }
    seen.sort();
    needles.sort();
    assert_eq!(seen, needles, "every needle, once");
    let counts = tab
        .eval("[...document.querySelectorAll('nav.counts [data-count]')].map(a => a.textContent.trim()).join('|')")
        .await;
    let counts = counts.as_str().expect("counts");
    assert!(counts.contains("All: 6"), "{counts}");
    // A count is a link to that status with the other filters kept.
    tab.click_and_load("[data-count=\"Completed\"]").await;
    let url = tab.url().await;
    assert!(
        url.contains("status=Completed") && url.contains("name=needle"),
        "{url}"
    );
    assert_eq!(
        tab.eval("document.querySelectorAll('tr[data-instance]').length")
            .await,
        0
    );
}

/// The dashboard answers only to its own names: another `Host` (a page whose DNS name was
/// pointed at this address, DNS rebinding) gets `421`, reads nothing and acts on nothing; the
/// loopback names and the configured ones are served, and `/healthz` answers any name (probes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_host_gets_421_and_its_own_names_are_served() {
    let s = system(&[("DASHBOARD__HOSTS", "dash.internal".into())]).await;
    let id = start(s.gateway, "Ada", 120).await;
    let port = s.dashboard;
    let get = |host: String, path: String| async move {
        request(port, "GET", &path, &[("Host", host.as_str())], "").await
    };
    for host in [
        format!("rebound.example:{port}"),
        "evil.example".into(),
        format!("127.0.0.2:{port}"),
    ] {
        let (code, _, body) = get(host.clone(), "/".into()).await;
        assert_eq!(code, 421, "{host}: {body}");
        assert!(!body.contains(&id), "{host}: the list leaked");
        let (code, _, body) = get(host.clone(), format!("/instances/{id}")).await;
        assert_eq!(code, 421, "{host}: {body}");
    }
    // An action under a foreign name is refused before anything else is looked at.
    let (code, _, _) = request(
        port,
        "POST",
        &format!("/instances/{id}/actions/terminate"),
        &[
            ("Host", "rebound.example"),
            ("Content-Type", "application/x-www-form-urlencoded"),
        ],
        "token=x",
    )
    .await;
    assert_eq!(code, 421);
    assert_eq!(
        status(s.gateway, &id, 0).await.expect("status")["status"],
        "Running"
    );
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        format!("LOCALHOST:{port}"),
        "dash.internal".into(),
        format!("dash.internal:{port}"),
    ] {
        let (code, _, body) = get(host.clone(), "/?paused=1".into()).await;
        assert_eq!(code, 200, "{host}: {body}");
        assert!(body.contains(&id), "{host}");
    }
    let (code, _, _) = get("probe.example".into(), "/healthz".into()).await;
    assert_eq!(code, 200, "probes come with any name");
}

/// The dashboard has every listener's deadlines: a head trickled a line a second is cut off at
/// its 10 s head timeout, a client that pipelines requests and never reads is cut off once the
/// answers stall for 10 s, pages are served meanwhile, and memory stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_heads_and_never_reading_clients_are_cut_off() {
    use std::time::Duration;
    use test_support::clients::{closed_within, never_reading, trickle};
    let s = system(&[]).await;
    let port = s.dashboard;
    let mut slow = Vec::new();
    for _ in 0..50 {
        slow.push(tokio::spawn(trickle(
            port,
            Duration::from_secs(1),
            Duration::from_secs(30),
        )));
    }
    let pipelined: Vec<u8> =
        b"GET /assets/dashboard.css HTTP/1.1\r\nHost: localhost\r\n\r\n".repeat(3000);
    let mut readers = Vec::new();
    for _ in 0..20 {
        readers.push(never_reading(port, &pipelined).await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (code, _, _) = request(port, "GET", "/?paused=1", &[], "").await;
    assert_eq!(code, 200, "served meanwhile");
    for t in slow {
        let kept = t.await.expect("join");
        assert!(
            kept >= Duration::from_secs(9) && kept < Duration::from_secs(15),
            "a trickled head kept its connection {kept:?}"
        );
    }
    for r in readers.iter_mut() {
        assert!(
            closed_within(r, Duration::from_secs(30)).await,
            "a never-reading client is still connected"
        );
    }
    let (peak, _) = test_support::process::rss_mib(s.dashboard_pid);
    eprintln!("dashboard under slow heads and never-reading clients: peak RSS {peak:.1} MiB");
    assert!(
        peak < 64.0,
        "peak RSS {peak:.1} MiB (the chart's limit is 64 MiB)"
    );
}

/// Entities and recurring schedules in Chromium: state, last change, the lock holder (linked to
/// its instance), waiting operations; a key holding markup is shown as text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_and_schedules_show_their_state_and_locks_in_chromium() {
    // A scheduler and the dashboard only: this test's worker runs every work item.
    let scheduler = test_support::in_process::scheduler(&[]);
    let endpoint = scheduler.endpoint();
    let dashboard = test_support::net::free_port();
    let _dash = test_support::process::spawn(
        "dashboard",
        &[
            ("ENDPOINT", endpoint.clone()),
            ("DASHBOARD__LISTEN", format!("127.0.0.1:{dashboard}")),
        ],
        dashboard,
    )
    .await;
    let page = |path: &str| format!("http://127.0.0.1:{dashboard}{path}");
    let conn = Connection::connect(ConnectionOptions::new(&endpoint, "default").expect("options"))
        .await
        .expect("connect");
    let mut r = Registry::new();
    r.add_entity("counter", |ctx: &mut EntityContext, n: i64| {
        let value = ctx.state::<i64>()?.unwrap_or(0);
        ctx.set_state(&(value + n))?;
        Ok(())
    });
    // Stands in for the SDKs' schedule entity: its state is the schedule's description.
    r.add_entity("schedule", |ctx: &mut EntityContext, every: u64| {
        ctx.set_state(&json!({"status": "Active", "interval_seconds": every}))?;
        Ok(())
    });
    r.add_orchestrator(
        "hold",
        |ctx: durabletask::OrchestrationContext, _: ()| async move {
            let lock = ctx
                .lock_entities(&[EntityId::new("counter", "held")])
                .await?;
            ctx.wait_for_external_event::<()>("never").await?;
            lock.release();
            Ok(())
        },
    );
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(Worker::new(&conn, r, WorkerOptions::default()).run(stop.clone()));
    let client = Client::new(&conn);
    let markup_key = "<b>bold</b>";
    for (id, n) in [
        (EntityId::new("counter", "a"), 5),
        (EntityId::new("counter", markup_key), 1),
    ] {
        client
            .signal_entity(&id, "add", &n, None)
            .await
            .expect("signal");
    }
    client
        .signal_entity(
            &EntityId::new("schedule", "nightly"),
            "create",
            &86_400,
            None,
        )
        .await
        .expect("signal");
    let holder = client
        .schedule_new_orchestration("hold", &(), StartOptions::default())
        .await
        .expect("start");
    // Once the counter is locked, an operation sent to it waits.
    for _ in 0..200 {
        let held = client
            .query_entities(durabletask::EntityQuery {
                instance_id_starts_with: Some("@counter@held".into()),
                include_transient: true,
                ..Default::default()
            })
            .await
            .expect("query");
        if held.entities.first().is_some_and(|m| m.locked_by.is_some()) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    client
        .signal_entity(&EntityId::new("counter", "held"), "add", &1, None)
        .await
        .expect("signal");
    let mut tab = Tab::open().await;
    let mut rows = serde_json::Value::Null;
    for _ in 0..200 {
        tab.goto(&page("/entities")).await;
        rows = tab
            .eval("[...document.querySelectorAll('tr[data-entity]')].map(r => [r.dataset.entity, r.dataset.locked, r.cells[2].textContent.trim(), r.cells[4].textContent.trim(), r.cells[5].textContent.trim()])")
            .await;
        let text = rows.to_string();
        if text.contains("@counter@a") && text.contains(&holder) && text.contains("Active") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let rows = rows.as_array().expect("rows").clone();
    let row = |id: &str| {
        rows.iter()
            .find(|r| r[0] == id)
            .unwrap_or_else(|| panic!("{id} not listed: {rows:?}"))
            .clone()
    };
    assert_eq!(row("@counter@a")[2], "5");
    let held = row("@counter@held");
    assert_eq!(
        (held[1].as_str(), held[3].as_str()),
        (Some("true"), Some(holder.as_str()))
    );
    assert_eq!(held[4], "1", "its operation waits for the lock");
    assert_eq!(row(&format!("@counter@{markup_key}"))[2], "1");
    let escaped = tab.eval("document.querySelectorAll('td b').length").await;
    assert_eq!(escaped, 0, "a key was rendered as markup");
    let schedules = tab
        .eval("[...document.querySelectorAll('table[aria-label=\"Schedules\"] tr[data-entity]')].map(r => r.dataset.entity)")
        .await;
    assert_eq!(schedules, json!(["@schedule@nightly"]));
    // The holder's link opens its instance.
    tab.click_and_load("tr[data-entity=\"@counter@held\"] td:nth-child(5) a")
        .await;
    assert!(tab.url().await.ends_with(&format!("/instances/{holder}")));
    tab.goto(&page("/entities")).await;
    tab.screenshot(&screenshots().join("entities.png"), None)
        .await;
    stop.cancel();
    let _ = worker.await;
}
