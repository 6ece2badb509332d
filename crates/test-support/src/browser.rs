//! Real headless Chromium (Debian's package), for the web pages: the DOM a page renders to.

use std::path::PathBuf;
use std::time::Duration;

/// The Chromium binary: `CHROMIUM`, or the first of the usual names on `PATH`.
pub fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        if let Some(dir) = std::env::var_os("PATH")
            .iter()
            .flat_map(std::env::split_paths)
            .find(|d| d.join(name).exists())
        {
            return dir.join(name);
        }
    }
    panic!(
        "this test needs headless Chromium: `make deps` installs it (make test runs it), or set CHROMIUM"
    );
}

/// Headless, as root, offline: every host but loopback unreachable (so a page that needs the
/// internet shows it) and none of Chromium's own background traffic.
const FLAGS: [&str; 10] = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-quic",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
];

/// The DOM of `url` once its scripts have run.
pub async fn dump_dom(url: &str) -> String {
    let profile = std::env::temp_dir().join(format!(
        "chromium-{}-{}",
        std::process::id(),
        crate::net::free_port()
    ));
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(chromium())
            .args(FLAGS)
            .args(["--virtual-time-budget=20000", "--dump-dom"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finished in time")
    .expect("run chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A tab of headless Chromium driven over the DevTools protocol: navigate, click and type as a
/// user does (real mouse and key events), answer `confirm()` dialogs, read the page, take
/// screenshots. Chromium stops when this is dropped. `DEVTOOLS_DEBUG=1` prints what DevTools
/// sends.
pub struct Tab {
    chromium: tokio::process::Child,
    profile: PathBuf,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    session: String,
    next_id: u64,
    events: std::collections::VecDeque<(String, serde_json::Value)>,
    /// How the next dialogs are answered: accepted (`true`, the default) or dismissed.
    pub accept_dialogs: bool,
    /// The messages of every dialog the page opened, in order.
    pub dialogs: Vec<String>,
}

/// How long one DevTools answer or awaited event may take.
const DEVTOOLS_WAIT: Duration = Duration::from_secs(60);

impl Tab {
    /// A new Chromium with one blank tab of 1280x900, every host but loopback unreachable.
    pub async fn open() -> Tab {
        use tokio::io::AsyncBufReadExt;
        let profile = std::env::temp_dir().join(format!(
            "chromium-tab-{}-{}",
            std::process::id(),
            crate::net::free_port()
        ));
        let mut chromium = tokio::process::Command::new(chromium())
            .args(FLAGS)
            .args(["--hide-scrollbars", "--remote-debugging-port=0"])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("run chromium");
        let mut lines = tokio::io::BufReader::new(chromium.stderr.take().expect("stderr")).lines();
        let endpoint = tokio::time::timeout(DEVTOOLS_WAIT, async {
            while let Some(line) = lines.next_line().await.expect("chromium's stderr") {
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    return url.trim().to_string();
                }
            }
            panic!("chromium exited before it listened for DevTools");
        })
        .await
        .expect("chromium listened for DevTools in time");
        // Keep reading its log so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (ws, _) = tokio_tungstenite::connect_async(endpoint.as_str())
            .await
            .expect("connect to DevTools");
        let mut tab = Tab {
            chromium,
            profile,
            ws,
            session: String::new(),
            next_id: 0,
            events: Default::default(),
            accept_dialogs: true,
            dialogs: Vec::new(),
        };
        let target = tab
            .call(
                "Target.createTarget",
                serde_json::json!({"url": "about:blank"}),
            )
            .await;
        let attached = tab
            .call(
                "Target.attachToTarget",
                serde_json::json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        tab.session = attached["sessionId"]
            .as_str()
            .expect("a session")
            .to_string();
        tab.call("Page.enable", serde_json::json!({})).await;
        tab.call("Runtime.enable", serde_json::json!({})).await;
        tab.call(
            "Emulation.setDeviceMetricsOverride",
            serde_json::json!({"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
        )
        .await;
        tab
    }

    /// One DevTools command on this tab (on the browser before the tab exists); its result.
    /// Dialogs the page opens meanwhile are answered (see [`Tab::accept_dialogs`]).
    pub async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        use futures_util::SinkExt;
        self.next_id += 1;
        let id = self.next_id;
        let mut message = serde_json::json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = self.session.clone().into();
        }
        self.ws
            .send(tokio_tungstenite::tungstenite::Message::text(
                message.to_string(),
            ))
            .await
            .expect("send to DevTools");
        loop {
            let m = self.receive().await;
            if m["id"] == id {
                if let Some(e) = m.get("error") {
                    panic!("DevTools {method} failed: {e}");
                }
                return m["result"].clone();
            }
        }
    }

    /// The next message: an answer is returned; an event is kept for [`Tab::wait_for`] (and
    /// `Null` returned); a dialog is answered at once.
    async fn receive(&mut self) -> serde_json::Value {
        use futures_util::{SinkExt, StreamExt};
        loop {
            let frame = tokio::time::timeout(DEVTOOLS_WAIT, self.ws.next())
                .await
                .expect("DevTools answered in time")
                .expect("DevTools is connected")
                .expect("a DevTools message");
            let tokio_tungstenite::tungstenite::Message::Text(text) = frame else {
                continue;
            };
            let m: serde_json::Value = serde_json::from_str(&text).expect("DevTools JSON");
            if std::env::var_os("DEVTOOLS_DEBUG").is_some() {
                eprintln!("devtools <- {}", &text[..text.len().min(300)]);
            }
            let Some(method) = m["method"].as_str() else {
                return m;
            };
            if method == "Page.javascriptDialogOpening" {
                self.dialogs
                    .push(m["params"]["message"].as_str().unwrap_or("").to_string());
                self.next_id += 1;
                let answer = serde_json::json!({
                    "id": self.next_id,
                    "method": "Page.handleJavaScriptDialog",
                    "params": {"accept": self.accept_dialogs},
                    "sessionId": self.session,
                });
                self.ws
                    .send(tokio_tungstenite::tungstenite::Message::text(
                        answer.to_string(),
                    ))
                    .await
                    .expect("answer the dialog");
                return serde_json::Value::Null;
            }
            self.events
                .push_back((method.to_string(), m["params"].clone()));
            if self.events.len() > 1_000 {
                self.events.pop_front();
            }
            return serde_json::Value::Null;
        }
    }

    /// Waits for the event `method` that came after the last [`Tab::forget_events`].
    pub async fn wait_for(&mut self, method: &str) -> serde_json::Value {
        let deadline = tokio::time::Instant::now() + DEVTOOLS_WAIT;
        loop {
            if let Some(at) = self.events.iter().position(|(m, _)| m == method) {
                return self.events.remove(at).expect("event").1;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {method} within {DEVTOOLS_WAIT:?}"
            );
            // An answer here is a late one to a command no one waits for (a dialog's).
            self.receive().await;
        }
    }

    pub fn forget_events(&mut self) {
        self.events.clear();
    }

    /// Opens `url` and waits for its load event.
    pub async fn goto(&mut self, url: &str) {
        if let Err(e) = self.navigate(url).await {
            panic!("navigating to {url}: {e}");
        }
    }

    /// Opens `url` and waits for its load event, or says why the browser showed no page
    /// (`net::ERR_...`).
    pub async fn navigate(&mut self, url: &str) -> Result<(), String> {
        self.forget_events();
        let r = self
            .call("Page.navigate", serde_json::json!({"url": url}))
            .await;
        if let Some(e) = r["errorText"].as_str() {
            return Err(e.to_string());
        }
        self.wait_for("Page.loadEventFired").await;
        // A load event can be a late one of the page before (a browser error page, say): wait
        // until this URL's document is the one shown, and complete.
        let shown = match url.split_once("://") {
            Some((scheme, rest)) => {
                let rest = rest.split_once('@').map_or(rest, |(creds, after)| {
                    if creds.contains('/') { rest } else { after }
                });
                format!("{scheme}://{rest}")
            }
            None => url.to_string(),
        };
        let check = format!(
            "document.readyState === 'complete' && !!document.body && location.href === {}",
            serde_json::Value::from(shown.as_str())
        );
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.eval(&check).await != true {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{url} never became the page shown"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }

    /// The value of a JavaScript expression (promises awaited).
    pub async fn eval(&mut self, expression: &str) -> serde_json::Value {
        let r = self
            .call(
                "Runtime.evaluate",
                serde_json::json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("{expression} threw: {e}");
        }
        r["result"]["value"].clone()
    }

    /// The page's URL.
    pub async fn url(&mut self) -> String {
        self.eval("location.href")
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// The page's text.
    pub async fn text(&mut self) -> String {
        self.eval("document.body.innerText")
            .await
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// Where `selector`'s element is in the viewport, scrolled into view: (x, y, width, height).
    async fn rect(&mut self, selector: &str) -> (f64, f64, f64, f64) {
        let js = format!(
            "(() => {{ const e = document.querySelector({}); if (!e) return null; \
             e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect(); \
             return [r.x, r.y, r.width, r.height]; }})()",
            serde_json::Value::from(selector)
        );
        let r = self.eval(&js).await;
        let n = |i: usize| {
            r[i].as_f64()
                .unwrap_or_else(|| panic!("no element {selector}"))
        };
        (n(0), n(1), n(2), n(3))
    }

    /// A left click in the middle of `selector`'s element, as the mouse does it.
    pub async fn click(&mut self, selector: &str) {
        let (x, y, w, h) = self.rect(selector).await;
        let (x, y) = (x + w / 2.0, y + h / 2.0);
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                serde_json::json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
            )
            .await;
        }
    }

    /// A click that leads to another page: waits for it to load.
    pub async fn click_and_load(&mut self, selector: &str) {
        self.forget_events();
        self.click(selector).await;
        self.wait_for("Page.loadEventFired").await;
    }

    /// One key pressed and released: `Tab`, `Enter`, `Space`, or a character.
    pub async fn press(&mut self, key: &str) {
        let (code, keycode, text) = match key {
            "Tab" => ("Tab", 9, ""),
            "Enter" => ("Enter", 13, "\r"),
            "Space" => ("Space", 32, " "),
            other => ("", 0, other),
        };
        let key_name = if key == "Space" { " " } else { key };
        self.call(
            "Input.dispatchKeyEvent",
            serde_json::json!({"type": if text.is_empty() { "rawKeyDown" } else { "keyDown" },
                "key": key_name, "code": code, "windowsVirtualKeyCode": keycode, "text": text}),
        )
        .await;
        self.call(
            "Input.dispatchKeyEvent",
            serde_json::json!({"type": "keyUp", "key": key_name, "code": code, "windowsVirtualKeyCode": keycode}),
        )
        .await;
    }

    /// Text typed into the focused field, one character at a time.
    pub async fn type_text(&mut self, text: &str) {
        for c in text.chars() {
            self.call(
                "Input.insertText",
                serde_json::json!({"text": c.to_string()}),
            )
            .await;
        }
    }

    /// Light or dark, as the system would ask for it (`prefers-color-scheme`).
    pub async fn color_scheme(&mut self, scheme: &str) {
        self.call(
            "Emulation.setEmulatedMedia",
            serde_json::json!({"features": [{"name": "prefers-color-scheme", "value": scheme}]}),
        )
        .await;
    }

    /// A PNG of the whole page, or of `selector`'s element (with a margin), written to `path`.
    pub async fn screenshot(&mut self, path: &std::path::Path, selector: Option<&str>) -> Vec<u8> {
        use base64::Engine;
        let clip = match selector {
            Some(sel) => {
                self.rect(sel).await;
                let js = format!(
                    "(() => {{ const r = document.querySelector({}).getBoundingClientRect(); \
                     return [r.x + scrollX, r.y + scrollY, r.width, r.height]; }})()",
                    serde_json::Value::from(sel)
                );
                let r = self.eval(&js).await;
                let n = |i: usize| r[i].as_f64().expect("a rect");
                let m = 12.0;
                serde_json::json!({"x": (n(0) - m).max(0.0), "y": (n(1) - m).max(0.0),
                    "width": n(2) + 2.0 * m, "height": n(3) + 2.0 * m, "scale": 1})
            }
            None => {
                let size = self
                    .eval("[document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
                    .await;
                serde_json::json!({"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1})
            }
        };
        let shot = self
            .call(
                "Page.captureScreenshot",
                serde_json::json!({"format": "png", "clip": clip, "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("screenshot data"))
            .expect("base64 PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot directory");
        }
        std::fs::write(path, &png).expect("write screenshot");
        png
    }
}

impl Drop for Tab {
    fn drop(&mut self) {
        let _ = self.chromium.start_kill();
        // The kill is asynchronous: removed at once, the profile was written again by the dying
        // browser and its helpers and left behind. Wait for the exit (briefly: this blocks).
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while matches!(self.chromium.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        for _ in 0..5 {
            let _ = std::fs::remove_dir_all(&self.profile);
            if !self.profile.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
