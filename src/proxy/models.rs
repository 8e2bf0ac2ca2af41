//! `GET /v1/models`: the union of the models the gateway routes, in OpenAI's list shape.
//!
//! Named routes contribute a card each. A catch-all route (`model = "*"`, e.g. from
//! `--upstream`) serves whatever its backends serve, so its pool is asked (first replica that
//! answers within a few seconds) and its cards are passed through as the backend wrote them.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};

use crate::proxy::pool::Pool;
use crate::proxy::route::{RoutingTable, Target};

/// How long to wait for a backend's own model list.
const BACKEND_LIST_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest backend model list read.
const MAX_LIST_BYTES: usize = 4 * 1024 * 1024;

/// The `/v1/models` response body.
pub async fn list(table: &RoutingTable, created: u64) -> Bytes {
    let mut seen = HashSet::new();
    let mut data = Vec::new();
    for route in table.routes() {
        if &*route.name == crate::config::ANY_MODEL {
            let pool = match &route.target {
                Target::Pool(pool) => pool,
                Target::Experiment(e) => match e.arms.first() {
                    Some(arm) => &arm.pool,
                    None => continue,
                },
            };
            for card in backend_cards(pool).await {
                let id = card.get("id").and_then(Value::as_str).map(str::to_owned);
                if let Some(id) = id {
                    if seen.insert(id) {
                        data.push(card);
                    }
                }
            }
        } else if seen.insert(route.name.to_string()) {
            data.push(json!({
                "id": &*route.name,
                "object": "model",
                "created": created,
                "owned_by": "servelens",
            }));
        }
    }
    let body = json!({"object": "list", "data": data});
    Bytes::from(body.to_string())
}

/// The cards of the first replica of `pool` that lists its models.
async fn backend_cards(pool: &Pool) -> Vec<Value> {
    for backend in &pool.backends {
        let Ok(uri) = format!("{}/v1/models", backend.base).parse::<Uri>() else {
            continue;
        };
        let mut request = Request::get(uri);
        if let Some(key) = &pool.api_key {
            request = request.header(http::header::AUTHORIZATION, key);
        }
        let Ok(request) = request.body(Full::new(Bytes::new())) else {
            continue;
        };
        let fetch = async {
            let response = pool.client.request(request).await.ok()?;
            if !response.status().is_success() {
                return None;
            }
            let body = http_body_util::Limited::new(response.into_body(), MAX_LIST_BYTES)
                .collect()
                .await
                .ok()?
                .to_bytes();
            let list: Value = serde_json::from_slice(&body).ok()?;
            list.get("data").and_then(Value::as_array).cloned()
        };
        match tokio::time::timeout(BACKEND_LIST_TIMEOUT, fetch).await {
            Ok(Some(cards)) => return cards,
            _ => tracing::debug!(backend = %backend.name, "no model list from backend"),
        }
    }
    Vec::new()
}
