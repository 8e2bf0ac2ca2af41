//! Step 1, *parse*: the fields the gateway needs, borrowed from the request body bytes.
//!
//! The body is parsed once into a view that borrows (`model`) or keeps raw JSON spans
//! (`stream_options`); every other key is skipped. Nothing is re-serialised: the original bytes
//! are what goes upstream (except the one documented `include_usage` insertion, see `usage.rs`).

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::GatewayError;
use crate::openai::Endpoint;
use crate::routing::prefix::PromptSource;

/// What routing and measuring need from one request body.
#[derive(Debug)]
pub struct InferenceRequest<'a> {
    /// Which endpoint was called.
    pub endpoint: Endpoint,
    /// The `model` field.
    pub model: Option<Cow<'a, str>>,
    /// `stream: true`.
    pub stream: bool,
    /// The raw `stream_options` value, a span of the body.
    pub stream_options: Option<&'a RawValue>,
    /// `stream_options.include_usage` as the client set it.
    pub include_usage: Option<bool>,
    /// `stream_options.continuous_usage_stats` as the client set it.
    pub continuous_usage: Option<bool>,
    /// Where the prompt text is (for the prefix routing key).
    pub prompt: PromptSource<'a>,
    /// The body's `user` (a sticky key for sessions and experiments).
    pub user: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct BodyView<'a> {
    #[serde(default, borrow, deserialize_with = "borrowed_str")]
    model: Option<Cow<'a, str>>,
    #[serde(default)]
    stream: Option<bool>,
    /// Present even when `null` (a plain `Option` would fold `null` into "absent").
    #[serde(default, borrow, deserialize_with = "present")]
    stream_options: Option<&'a RawValue>,
    #[serde(default, borrow)]
    messages: Option<&'a RawValue>,
    #[serde(default, borrow)]
    prompt: Option<&'a RawValue>,
    #[serde(default, borrow)]
    text: Option<&'a RawValue>,
    #[serde(default, borrow)]
    input_ids: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "borrowed_str")]
    user: Option<Cow<'a, str>>,
}

/// A string borrowed from the input when it has no escapes (serde's `Option<Cow>` always copies).
fn borrowed_str<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    struct V;
    impl<'de> serde::de::Visitor<'de> for V {
        type Value = Option<Cow<'de, str>>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a string or null")
        }
        fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Borrowed(v)))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(Cow::Owned(v.to_owned())))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_str(self)
        }
    }
    d.deserialize_option(V)
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct StreamOptionsView {
    #[serde(default)]
    include_usage: Option<bool>,
    #[serde(default)]
    continuous_usage_stats: Option<bool>,
}

impl<'a> InferenceRequest<'a> {
    /// Parses `body` as the JSON object an inference endpoint takes.
    pub fn parse(endpoint: Endpoint, body: &'a [u8]) -> Result<Self, GatewayError> {
        // serde would also accept a JSON array for a struct; the endpoints take objects only.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(GatewayError::BadJson(
                "the body must be a JSON object".into(),
            ));
        }
        let view: BodyView<'a> =
            serde_json::from_slice(body).map_err(|e| GatewayError::BadJson(e.to_string()))?;
        let options = match view.stream_options {
            Some(raw) if raw.get() != "null" => Some(
                serde_json::from_str::<StreamOptionsView>(raw.get())
                    .map_err(|e| GatewayError::BadJson(format!("stream_options: {e}")))?,
            ),
            _ => None,
        };
        Ok(Self {
            endpoint,
            model: view.model,
            stream: view.stream.unwrap_or(false),
            stream_options: view.stream_options,
            include_usage: options.as_ref().and_then(|o| o.include_usage),
            continuous_usage: options.as_ref().and_then(|o| o.continuous_usage_stats),
            prompt: PromptSource {
                messages: view.messages,
                prompt: view.prompt,
                text: view.text,
                input_ids: view.input_ids,
            },
            user: view.user,
        })
    }

    /// The model name, if the body had one.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrows_the_fields_it_needs() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#;
        let req = InferenceRequest::parse(Endpoint::ChatCompletions, body).expect("valid");
        assert_eq!(req.model(), Some("m"));
        assert!(req.stream);
        assert_eq!(req.include_usage, Some(true));
        assert!(matches!(req.model, Some(Cow::Borrowed(_))));
    }

    #[test]
    fn refuses_what_is_not_a_json_object() {
        for body in [
            &b"{"[..],
            b"[]",
            b"\"x\"",
            b"",
            br#"{"model":"m","stream":"yes"}"#,
        ] {
            let err = InferenceRequest::parse(Endpoint::Completions, body).expect_err("invalid");
            assert_eq!(err.status().as_u16(), 400);
        }
    }

    #[test]
    fn missing_fields_default() {
        let req = InferenceRequest::parse(Endpoint::Generate, br#"{"text":"hi"}"#).expect("valid");
        assert_eq!(req.model(), None);
        assert!(!req.stream);
        assert_eq!(req.include_usage, None);
    }
}
