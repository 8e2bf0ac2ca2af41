//! Header handling at the proxy boundary (RFC 9110 §7.6.1): hop-by-hop fields are dropped in
//! both directions, `Host` and `Content-Length` are left for hyper to set for the new hop, every
//! request carries an `x-request-id`, and `Via` names the gateway.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The request id header; generated when the client sends none, forwarded to the backend
/// (vLLM uses it as the response `id`) and returned to the client.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Fields that describe one connection, never forwarded (RFC 9110 §7.6.1 plus the legacy
/// `Proxy-Connection` and `Keep-Alive`).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
    HeaderName::from_static("keep-alive"),
];

static VIA: HeaderValue = HeaderValue::from_static("1.1 servelens");

/// Removes hop-by-hop fields, including those the `Connection` header lists.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    headers.remove("proxy-connection");
}

/// Prepares the client's headers for the upstream hop, in place.
pub fn prepare_request(
    headers: &mut HeaderMap,
    request_id: &HeaderValue,
    api_key: Option<&HeaderValue>,
) {
    strip_hop_by_hop(headers);
    headers.remove(header::HOST);
    headers.remove(header::CONTENT_LENGTH);
    headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    headers.append(header::VIA, VIA.clone());
    if let Some(key) = api_key {
        headers.insert(header::AUTHORIZATION, key.clone());
    }
}

/// Prepares the backend's headers for the client hop, in place. `body_rewritten` drops
/// `Content-Length` when the gateway withholds bytes from the body.
pub fn prepare_response(headers: &mut HeaderMap, request_id: &HeaderValue, body_rewritten: bool) {
    strip_hop_by_hop(headers);
    if body_rewritten {
        headers.remove(header::CONTENT_LENGTH);
    }
    if !headers.contains_key(&X_REQUEST_ID) {
        headers.insert(X_REQUEST_ID.clone(), request_id.clone());
    }
    headers.append(header::VIA, VIA.clone());
}

/// The client's request id if it sent a usable one, else a fresh random one.
pub fn request_id(headers: &HeaderMap) -> HeaderValue {
    match headers.get(&X_REQUEST_ID) {
        Some(v) if !v.is_empty() && v.len() <= 256 && v.to_str().is_ok() => v.clone(),
        _ => {
            let mut buf = [0u8; uuid::fmt::Simple::LENGTH];
            let id = uuid::Uuid::new_v4().simple().encode_lower(&mut buf);
            HeaderValue::from_str(id).unwrap_or_else(|_| HeaderValue::from_static("servelens"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_listed_and_standard_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret"),
        );
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));
    }

    #[test]
    fn request_id_is_kept_or_generated() {
        let mut h = HeaderMap::new();
        let generated = request_id(&h);
        assert_eq!(generated.len(), 32);
        assert_ne!(generated, request_id(&h));
        h.insert(X_REQUEST_ID.clone(), HeaderValue::from_static("abc"));
        assert_eq!(request_id(&h), "abc");
    }

    #[test]
    fn request_gets_id_key_and_loses_host() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("gateway"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer client"),
        );
        let key = HeaderValue::from_static("Bearer pool");
        prepare_request(&mut h, &HeaderValue::from_static("id1"), Some(&key));
        assert!(!h.contains_key(header::HOST));
        assert_eq!(h[header::AUTHORIZATION], "Bearer pool");
        assert_eq!(h[&X_REQUEST_ID], "id1");
    }
}
