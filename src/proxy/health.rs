//! Active health: probing every backend on its pool's interval.
//!
//! A probe is a `GET` of the framework's health path (vLLM, SGLang, TGI, TensorRT-LLM and
//! llama.cpp: `/health`; Ollama: `/`; a generic OpenAI server: `/v1/models`) over the pool's
//! own client; 2xx within the timeout passes. `unhealthy_threshold` failures in a row take a
//! backend out of rotation, `healthy_threshold` passes bring it back (and clear any passive
//! ejection). Passive ejection itself lives with the backend state
//! ([`Backend::record_failure`](crate::proxy::pool::Backend::record_failure)).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};

use crate::config::Framework;
use crate::proxy::pool::{Backend, Pool};

/// The default probe path of a framework.
pub fn default_path(framework: Framework) -> &'static str {
    match framework {
        Framework::Ollama => "/",
        Framework::Openai => "/v1/models",
        Framework::Vllm
        | Framework::Sglang
        | Framework::Tgi
        | Framework::Trtllm
        | Framework::Llamacpp => "/health",
    }
}

/// Starts a probe of every backend of `pool` that is due (non-blocking: probes run on their
/// own tasks).
pub fn probe_due(pool: &Arc<Pool>) {
    for backend in &pool.backends {
        backend.publish_up();
        if pool.health.enabled && backend.claim_probe(pool.health.interval) {
            tokio::spawn(probe(pool.clone(), backend.clone()));
        }
    }
}

/// Probes one backend once and records the result.
pub async fn probe(pool: Arc<Pool>, backend: Arc<Backend>) {
    let path = pool
        .health
        .path
        .clone()
        .unwrap_or_else(|| default_path(pool.framework).to_string());
    let ok = check(&pool, &backend, &path).await;
    backend.record_probe(ok, &pool.health);
    backend.probe_done();
}

async fn check(pool: &Pool, backend: &Backend, path: &str) -> bool {
    let Ok(uri) = format!("{}{}", backend.base, path).parse::<Uri>() else {
        return false;
    };
    let mut request = Request::get(uri);
    if let Some(key) = &pool.api_key {
        request = request.header(http::header::AUTHORIZATION, key);
    }
    let Ok(request) = request.body(Full::new(Bytes::new())) else {
        return false;
    };
    let exchange = async {
        let response = pool.client.request(request).await.ok()?;
        let ok = response.status().is_success();
        // Read the (small) body so the connection goes back to the pool.
        let _ = response.into_body().collect().await;
        Some(ok)
    };
    matches!(
        tokio::time::timeout(pool.health.timeout, exchange).await,
        Ok(Some(true))
    )
}
