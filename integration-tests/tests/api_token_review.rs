//! The HTTP read side authenticated by Kubernetes TokenReview: a real axum server protected by
//! `BearerToken` with a `TokenReviewer`, asking the fake API server (which answers real
//! `authentication.k8s.io/v1` TokenReview JSON), called with curl. An allowed service account or
//! group gets through; an unknown token, a known but not allowed identity, or none gets 401;
//! answers are cached; the static token keeps working beside it; `/healthz` stays open.

use std::time::Duration;

use anyhow::Result;
use clovisor_integration_tests::fake_kube::FakeKube;
use clovisor_integration_tests::http_client::http_status;
use clovisor_runtime::auth::token_review::TokenReviewer;
use clovisor_runtime::auth::BearerToken;

async fn status(url: String, token: Option<&str>) -> Result<u16> {
    let header = token.map(|t| format!("Authorization: Bearer {t}"));
    tokio::task::spawn_blocking(move || {
        let headers: Vec<&str> = header.iter().map(String::as_str).collect();
        http_status(&url, &headers)
    })
    .await?
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_the_api_server_vouches_for_and_that_are_allowed_get_through() -> Result<()> {
    let kube = FakeKube::start().await?;
    kube.add_token(
        "prom-token",
        "system:serviceaccount:monitoring:prometheus",
        &["system:serviceaccounts"],
    );
    kube.add_token(
        "reader-token",
        "system:serviceaccount:team:dashboard",
        &["clovisor-readers"],
    );
    kube.add_token(
        "other-pod-token",
        "system:serviceaccount:default:some-app",
        &["system:serviceaccounts"],
    );
    let dir = tempfile::tempdir()?;
    let path = kube.write_kubeconfig(dir.path())?;
    let kubeconfig = kube::config::Kubeconfig::read_from(&path)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let reviewer = TokenReviewer::new(
        kube::Client::try_from(config)?,
        [
            "system:serviceaccount:monitoring:prometheus".to_owned(),
            "group:clovisor-readers".to_owned(),
        ],
        Vec::new(),
    );
    let auth = BearerToken::from_value("static-s3cret").with_review(reviewer);
    let router = auth.protect(
        axum::Router::new()
            .route("/healthz", axum::routing::get(|| async { "ok" }))
            .route("/metrics", axum::routing::get(|| async { "metrics" })),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let metrics = format!("http://{addr}/metrics");

    for (token, want, why) in [
        (None, 401, "no token"),
        (Some("prom-token"), 200, "an allowed service account"),
        (Some("reader-token"), 200, "a member of an allowed group"),
        (
            Some("other-pod-token"),
            401,
            "authenticated, but not allowed",
        ),
        (Some("forged-token"), 401, "a token the API server rejects"),
        (Some("static-s3cret"), 200, "the static token beside it"),
    ] {
        let got = status(metrics.clone(), token).await?;
        assert_eq!(got, want, "{why}: expected {want}, got {got}");
    }
    assert_eq!(
        status(format!("http://{addr}/healthz"), None).await?,
        200,
        "the kubelet's probe needs no token"
    );

    let reviews = kube.requests("tokenreviews", "create");
    assert_eq!(
        reviews, 4,
        "one review per distinct token (the static one needs none)"
    );
    for _ in 0..3 {
        assert_eq!(status(metrics.clone(), Some("prom-token")).await?, 200);
        assert_eq!(status(metrics.clone(), Some("forged-token")).await?, 401);
    }
    assert_eq!(
        kube.requests("tokenreviews", "create"),
        reviews,
        "answers are cached: repeated calls ask the API server nothing"
    );
    assert!(
        auth.refused() >= 5,
        "refusals are counted, saw {}",
        auth.refused()
    );

    // The API server gone: a token not cached is refused (fails closed).
    drop(kube);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        status(metrics.clone(), Some("new-token")).await?,
        401,
        "no API server, no admission"
    );
    server.abort();
    Ok(())
}
