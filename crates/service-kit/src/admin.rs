//! The admin routes every service serves on its admin listener: `/healthz` (the process serves
//! HTTP), `/readyz` (the service's own readiness: `200 ready`, or `503` with the reason) and
//! `/metrics` (the Prometheus text or OpenMetrics exposition, as `Accept` asks).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

/// The three routes: `ready` says whether the service is ready (else why not), `metrics`
/// encodes the service's registry for an `Accept` header (content type, body).
pub fn router<R, RF, M>(ready: R, metrics: M) -> Router
where
    R: Fn() -> RF + Send + Sync + 'static,
    RF: Future<Output = Result<(), String>> + Send + 'static,
    M: Fn(Option<&str>) -> (&'static str, String) + Send + Sync + 'static,
{
    let ready = Arc::new(ready);
    let metrics = Arc::new(metrics);
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let answer = ready();
                async move {
                    match answer.await {
                        Ok(()) => (StatusCode::OK, "ready\n".to_string()),
                        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
                    }
                }
            }),
        )
        .route(
            "/metrics",
            get(move |headers: HeaderMap| {
                let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
                let (content_type, body) = metrics(accept);
                async move { ([(header::CONTENT_TYPE, content_type)], body).into_response() }
            }),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn get(router: Router, path: &str, accept: Option<&str>) -> (StatusCode, String, String) {
        let mut req = Request::get(path);
        if let Some(a) = accept {
            req = req.header(header::ACCEPT, a);
        }
        let resp = router
            .oneshot(req.body(Body::empty()).expect("request"))
            .await
            .expect("answer");
        let status = resp.status();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .expect("body");
        (status, content_type, String::from_utf8_lossy(&body).into())
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let router = || {
            let ready = ready.clone();
            router(
                move || {
                    let ready = ready.load(std::sync::atomic::Ordering::SeqCst);
                    async move {
                        if ready {
                            Ok(())
                        } else {
                            Err("stream not connected".to_string())
                        }
                    }
                },
                |accept| match accept {
                    Some(a) if a.contains("openmetrics") => {
                        ("application/openmetrics-text", "om".into())
                    }
                    _ => ("text/plain", "text".into()),
                },
            )
        };
        assert_eq!(get(router(), "/healthz", None).await.2, "ok\n");
        let (status, _, body) = get(router(), "/readyz", None).await;
        assert_eq!(
            (status, body.as_str()),
            (StatusCode::SERVICE_UNAVAILABLE, "stream not connected\n")
        );
        ready.store(true, std::sync::atomic::Ordering::SeqCst);
        let (status, _, body) = get(router(), "/readyz", None).await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ready\n"));
        let (_, content_type, body) =
            get(router(), "/metrics", Some("application/openmetrics-text")).await;
        assert_eq!(
            (content_type.as_str(), body.as_str()),
            ("application/openmetrics-text", "om")
        );
        let (_, content_type, _) = get(router(), "/metrics", None).await;
        assert_eq!(content_type, "text/plain");
    }
}
