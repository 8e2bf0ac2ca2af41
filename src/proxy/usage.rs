//! The one body change the gateway makes: asking the backend for `stream_options.include_usage`.
//!
//! Exact token counts only come from the backend's `usage`, which streams carry only when the
//! client asked. With `usage.inject = true` (the default) the gateway splices
//! `"include_usage":true` into the request bytes (no re-serialisation: everything else stays
//! byte-identical) and the tap withholds the resulting usage-only event from the client, so the
//! client still receives exactly what it asked for.
//!
//! It does not inject when the client already decided (`include_usage` present, true or false),
//! when it asked for `continuous_usage_stats` (vLLM would then add usage to *every* chunk the
//! client sees), or when `stream_options` is something other than an object.

use bytes::{Bytes, BytesMut};

use crate::openai::Endpoint;
use crate::proxy::request::InferenceRequest;

const FIELD: &[u8] = br#""stream_options":{"include_usage":true},"#;
const MEMBER: &[u8] = br#""include_usage":true"#;

/// The body with `include_usage` spliced in, or `None` when nothing should change.
pub fn inject_include_usage(body: &Bytes, req: &InferenceRequest<'_>) -> Option<Bytes> {
    let eligible = req.stream
        && matches!(
            req.endpoint,
            Endpoint::ChatCompletions | Endpoint::Completions
        )
        && req.include_usage.is_none()
        && req.continuous_usage != Some(true);
    if !eligible {
        return None;
    }
    match req.stream_options {
        None => {
            let open = body.iter().position(|b| !b.is_ascii_whitespace())?;
            (body[open] == b'{').then(|| splice(body, open + 1, FIELD))
        }
        Some(raw) => {
            let text = raw.get();
            if !text.starts_with('{') {
                return None;
            }
            // `raw` borrows from `body`, so its offset locates the object in the bytes.
            let start = (text.as_ptr() as usize).checked_sub(body.as_ptr() as usize)?;
            if start + text.len() > body.len() {
                return None;
            }
            let inner_empty = text[1..text.len() - 1].trim().is_empty();
            let member: Vec<u8> = if inner_empty {
                MEMBER.to_vec()
            } else {
                [MEMBER, b","].concat()
            };
            Some(splice(body, start + 1, &member))
        }
    }
}

fn splice(body: &[u8], at: usize, insert: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + insert.len());
    out.extend_from_slice(&body[..at]);
    out.extend_from_slice(insert);
    out.extend_from_slice(&body[at..]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inject(body: &str) -> Option<String> {
        let bytes = Bytes::copy_from_slice(body.as_bytes());
        let req = InferenceRequest::parse(Endpoint::ChatCompletions, &bytes).expect("valid");
        inject_include_usage(&bytes, &req).map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    fn options(body: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(body).expect("still valid JSON");
        v["stream_options"].clone()
    }

    #[test]
    fn inserts_stream_options_when_absent() {
        let out = inject(r#" {"model":"m","stream":true}"#).expect("injected");
        assert_eq!(
            out,
            r#" {"stream_options":{"include_usage":true},"model":"m","stream":true}"#
        );
    }

    #[test]
    fn adds_the_member_to_existing_options() {
        let out =
            inject(r#"{"model":"m","stream":true,"stream_options":{"x":1}}"#).expect("injected");
        assert_eq!(options(&out)["include_usage"], true);
        assert_eq!(options(&out)["x"], 1);
        let out = inject(r#"{"model":"m","stream":true,"stream_options":{ }}"#).expect("injected");
        assert_eq!(options(&out)["include_usage"], true);
    }

    #[test]
    fn leaves_explicit_choices_alone() {
        assert!(
            inject(r#"{"model":"m","stream":true,"stream_options":{"include_usage":false}}"#)
                .is_none()
        );
        assert!(
            inject(r#"{"model":"m","stream":true,"stream_options":{"include_usage":true}}"#)
                .is_none()
        );
        assert!(inject(
            r#"{"model":"m","stream":true,"stream_options":{"continuous_usage_stats":true}}"#
        )
        .is_none());
        assert!(inject(r#"{"model":"m","stream":true,"stream_options":null}"#).is_none());
        assert!(inject(r#"{"model":"m","stream":false}"#).is_none());
    }

    proptest::proptest! {
        /// The one body change the gateway makes keeps the body valid JSON, sets
        /// `include_usage`, and leaves every other member exactly as it was, whatever the
        /// client's members, their order, and its whitespace; a client that decided is left
        /// alone.
        #[test]
        fn injection_keeps_json_valid_and_members_intact(
            others in proptest::collection::btree_map("[a-z_]{1,8}", "[ -~]{0,12}", 0..5),
            options in proptest::option::of(proptest::collection::btree_map(
                proptest::prop_oneof!["[a-z]{1,6}", proptest::strategy::Just("include_usage".to_string())],
                proptest::prelude::any::<bool>(),
                0..3,
            )),
            space in "[ \n\t]{0,3}",
        ) {
            let mut members = vec![r#""model":"m""#.to_string(), format!(r#""stream":{space}true"#)];
            for (key, value) in &others {
                if !matches!(key.as_str(), "model" | "stream" | "stream_options") {
                    members.push(format!("{}:{space}{}", serde_json::json!(key), serde_json::json!(value)));
                }
            }
            if let Some(options) = &options {
                members.push(format!(r#""stream_options":{space}{}"#, serde_json::json!(options)));
            }
            let body = format!("{space}{{{space}{}{space}}}", members.join(&format!(",{space}")));
            let before: serde_json::Value = serde_json::from_str(&body).expect("generated JSON");
            let decided = options.as_ref().is_some_and(|o| o.contains_key("include_usage"));
            match inject(&body) {
                Some(after) => {
                    let mut after: serde_json::Value = serde_json::from_str(&after)
                        .map_err(|e| proptest::test_runner::TestCaseError::fail(format!("{e}: {after}")))?;
                    proptest::prop_assert!(!decided);
                    proptest::prop_assert_eq!(&after["stream_options"]["include_usage"], &serde_json::json!(true));
                    // Without the added member, the body is what the client sent.
                    let added = after["stream_options"].as_object_mut().map(|o| o.remove("include_usage"));
                    proptest::prop_assert!(added.is_some());
                    if options.is_none() {
                        after.as_object_mut().map(|o| o.remove("stream_options"));
                    }
                    proptest::prop_assert_eq!(after, before);
                }
                None => proptest::prop_assert!(decided),
            }
        }
    }
}
