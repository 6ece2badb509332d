//! What the project's tests and benches share, as a dev-dependency: one copy of each helper.
//!
//! - [`browser`]: headless Chromium, the DOM a page renders to.
//! - [`clients`]: clients that misbehave on purpose (never reading, trickling a head).
//! - [`fake_scheduler`]: an in-process fake DTS server that records what the SDK sends.
//! - [`fleet`]: worker processes scaled and killed by signal, and what their activities logged.
//! - [`in_process`]: the local scheduler and the worker as libraries in the test process.
//! - [`http`]: raw HTTP/1.1 requests with every header under the test's control.
//! - [`net`]: free ports and waiting for a listener.
//! - [`process`]: the workspace's binaries.
//! - [`prometheus`]: a real Prometheus scraping real processes, and PromQL against it.
//! - [`python`]: the official Python SDK as an independent peer (the project's `.venv`).
//! - [`exposition`]: reading a `/metrics` page.
//! - [`scenarios`]: orchestration scenarios run against every server we test.
//! - [`oidc`]: an identity provider (keys, hand-signed tokens, discovery and JWKS over HTTP).
//! - [`readme`]: the configuration tables of `docs/configuration.md`, checked against the settings' defaults.

pub mod azurite;
pub mod browser;
pub mod clients;
pub mod exposition;
pub mod fake_scheduler;
pub mod fleet;
pub mod http;
pub mod in_process;
pub mod net;
pub mod oidc;
pub mod process;
pub mod prometheus;
pub mod python;
pub mod readme;
pub mod scenarios;
