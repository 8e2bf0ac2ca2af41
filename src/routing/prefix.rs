//! The prompt-prefix routing key: a stable 64-bit hash of the first `prefix_chars` bytes of the
//! prompt text, chained block by block.
//!
//! The prompt text is what the engine will prefill, in order: for chat, each message's role and
//! content (`role \x1f content \x1e`, text parts of multimodal content concatenated); for
//! completions, the prompt (first prompt of a batch); for SGLang `/generate`, `text` or the
//! `input_ids`. Only the first `prefix_chars` bytes count, so requests that share a system
//! prompt at least that long share a key, and every turn of a conversation keeps the key of its
//! first turn.
//!
//! The bytes are cut into blocks of `block_chars`; `h_0 = xxh3(model)`,
//! `h_i = xxh3(block_i, seed = h_{i-1})`, and the key is the last `h_i` (a trailing partial block
//! included). XXH3 is specified and seedable, so every gateway process and replica computes the
//! same key for the same prompt. An empty prompt has no key: the caller must not route it by
//! hash (an empty key would pin all such traffic to one replica).
//!
//! Cost: one pass over at most `prefix_chars` bytes; content strings are read in place when
//! they have no escapes.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

/// How much of the prompt makes the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixSpec {
    /// Bytes of prompt text hashed.
    pub prefix_chars: usize,
    /// Bytes per hash block.
    pub block_chars: usize,
}

impl Default for PrefixSpec {
    fn default() -> Self {
        Self {
            prefix_chars: 1024,
            block_chars: 64,
        }
    }
}

/// Where the prompt text comes from, as borrowed JSON spans of the request body.
#[derive(Debug, Clone, Copy, Default)]
pub struct PromptSource<'a> {
    /// Chat `messages`.
    pub messages: Option<&'a RawValue>,
    /// Completions `prompt`.
    pub prompt: Option<&'a RawValue>,
    /// SGLang `text`.
    pub text: Option<&'a RawValue>,
    /// SGLang `input_ids`.
    pub input_ids: Option<&'a RawValue>,
}

/// A chained block hasher over at most `prefix_chars` bytes.
struct Chain {
    spec: PrefixSpec,
    block: Vec<u8>,
    hash: u64,
    taken: usize,
}

impl Chain {
    fn new(spec: PrefixSpec, model: &str) -> Self {
        Self {
            spec,
            block: Vec::with_capacity(spec.block_chars),
            hash: xxhash_rust::xxh3::xxh3_64(model.as_bytes()),
            taken: 0,
        }
    }

    fn full(&self) -> bool {
        self.taken >= self.spec.prefix_chars
    }

    fn push(&mut self, mut bytes: &[u8]) {
        let block_chars = self.spec.block_chars.max(1);
        while !bytes.is_empty() && !self.full() {
            let room = (block_chars - self.block.len()).min(self.spec.prefix_chars - self.taken);
            let take = room.min(bytes.len());
            self.block.extend_from_slice(&bytes[..take]);
            self.taken += take;
            bytes = &bytes[take..];
            if self.block.len() == block_chars {
                self.seal();
            }
        }
    }

    fn seal(&mut self) {
        self.hash = xxhash_rust::xxh3::xxh3_64_with_seed(&self.block, self.hash);
        self.block.clear();
    }

    fn finish(mut self) -> Option<u64> {
        if !self.block.is_empty() {
            self.seal();
        }
        (self.taken > 0).then_some(self.hash)
    }
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(default, borrow)]
    role: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    content: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Part<'a> {
    #[serde(default, borrow)]
    text: Option<Cow<'a, str>>,
}

/// Most bytes of a chat hashed into its conversation key.
const CONVERSATION_CHARS: usize = 64 * 1024;

/// The keys of one prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixKeys {
    /// The routing key: the first `prefix_chars` bytes.
    pub prefix: u64,
    /// Chat only: the conversation's identity, everything up to and including the first user
    /// message (the same for every turn of one conversation, different between conversations
    /// that share a system prompt).
    pub conversation: Option<u64>,
}

/// The routing key of a prompt, or `None` when there is no prompt text.
pub fn prefix_key(source: &PromptSource<'_>, model: &str, spec: PrefixSpec) -> Option<u64> {
    prefix_keys(source, model, spec).map(|k| k.prefix)
}

/// The routing key and (for chats) the conversation key of a prompt.
pub fn prefix_keys(source: &PromptSource<'_>, model: &str, spec: PrefixSpec) -> Option<PrefixKeys> {
    let mut chain = Chain::new(spec, model);
    let mut conversation = None;
    if let Some(messages) = source.messages {
        let messages: Vec<Message<'_>> = serde_json::from_str(messages.get()).ok()?;
        let mut whole = Chain::new(
            PrefixSpec {
                prefix_chars: CONVERSATION_CHARS,
                ..spec
            },
            model,
        );
        let mut first_user_done = false;
        for message in messages {
            if chain.full() && first_user_done {
                break;
            }
            let role = message.role.as_deref().unwrap_or("");
            push_message(&mut chain, role, message.content);
            if !first_user_done {
                push_message(&mut whole, role, message.content);
            }
            if role == "user" && !first_user_done {
                first_user_done = true;
                conversation = std::mem::replace(&mut whole, Chain::new(spec, model)).finish();
            }
        }
    } else if let Some(prompt) = source.prompt.or(source.text) {
        push_prompt(&mut chain, prompt);
    } else if let Some(ids) = source.input_ids {
        // Token ids: their JSON text is as stable as the ids themselves.
        chain.push(ids.get().as_bytes());
    }
    chain.finish().map(|prefix| PrefixKeys {
        prefix,
        conversation,
    })
}

/// One chat message: `role \x1f content \x1e`.
fn push_message(chain: &mut Chain, role: &str, content: Option<&RawValue>) {
    chain.push(role.as_bytes());
    chain.push(b"\x1f");
    if let Some(content) = content {
        push_content(chain, content);
    }
    chain.push(b"\x1e");
}

/// A message `content`: a string, or an array of parts whose `text`s are concatenated.
fn push_content(chain: &mut Chain, content: &RawValue) {
    let raw = content.get();
    if raw.starts_with('"') {
        if let Ok(text) = serde_json::from_str::<Cow<'_, str>>(raw) {
            chain.push(text.as_bytes());
        }
    } else if raw.starts_with('[') {
        if let Ok(parts) = serde_json::from_str::<Vec<Part<'_>>>(raw) {
            for text in parts.iter().filter_map(|p| p.text.as_deref()) {
                chain.push(text.as_bytes());
            }
        }
    }
}

/// A completions prompt: a string, a list of strings (the first), or token ids.
fn push_prompt(chain: &mut Chain, prompt: &RawValue) {
    let raw = prompt.get();
    if raw.starts_with('"') {
        if let Ok(text) = serde_json::from_str::<Cow<'_, str>>(raw) {
            chain.push(text.as_bytes());
        }
    } else if raw.starts_with('[') {
        match serde_json::from_str::<Vec<&RawValue>>(raw) {
            Ok(items) if items.first().is_some_and(|i| i.get().starts_with('"')) => {
                push_prompt(chain, items[0]);
            }
            Ok(_) => chain.push(raw.as_bytes()),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw(json: &str) -> Box<RawValue> {
        RawValue::from_string(json.to_string()).expect("valid JSON")
    }

    fn chat_key(messages: &str, spec: PrefixSpec) -> Option<u64> {
        let messages = raw(messages);
        prefix_key(
            &PromptSource {
                messages: Some(&messages),
                ..PromptSource::default()
            },
            "m",
            spec,
        )
    }

    fn completion_key(prompt: &str) -> Option<u64> {
        let prompt = raw(prompt);
        prefix_key(
            &PromptSource {
                prompt: Some(&prompt),
                ..PromptSource::default()
            },
            "m",
            PrefixSpec::default(),
        )
    }

    const SYSTEM: &str = "You are a careful assistant. ";

    fn conversation(system: &str, turns: &[&str]) -> String {
        let mut messages = vec![format!(
            r#"{{"role":"system","content":"{}"}}"#,
            system.repeat(40)
        )];
        for (i, turn) in turns.iter().enumerate() {
            let role = if i % 2 == 0 { "user" } else { "assistant" };
            messages.push(format!(r#"{{"role":"{role}","content":"{turn}"}}"#));
        }
        format!("[{}]", messages.join(","))
    }

    #[test]
    fn a_shared_long_system_prompt_shares_the_key() {
        let spec = PrefixSpec::default();
        let a = chat_key(&conversation(SYSTEM, &["What is 2+2?"]), spec);
        let b = chat_key(&conversation(SYSTEM, &["Name a colour."]), spec);
        let c = chat_key(
            &conversation("You are a pirate. Arr. ", &["What is 2+2?"]),
            spec,
        );
        assert!(a.is_some());
        assert_eq!(a, b, "only the first 1024 bytes count");
        assert_ne!(a, c);
    }

    #[test]
    fn every_turn_of_a_conversation_keeps_its_key() {
        let spec = PrefixSpec::default();
        let turn1 = chat_key(&conversation(SYSTEM, &["hi"]), spec);
        let turn3 = chat_key(&conversation(SYSTEM, &["hi", "hello!", "and now?"]), spec);
        assert_eq!(turn1, turn3);
    }

    #[test]
    fn conversations_have_their_own_key_across_turns() {
        let keys = |messages: &str| {
            let messages = raw(messages);
            prefix_keys(
                &PromptSource {
                    messages: Some(&messages),
                    ..PromptSource::default()
                },
                "m",
                PrefixSpec::default(),
            )
            .expect("keys")
        };
        let a1 = keys(&conversation(SYSTEM, &["question A"]));
        let a3 = keys(&conversation(
            SYSTEM,
            &["question A", "answer", "follow-up"],
        ));
        let b1 = keys(&conversation(SYSTEM, &["question B"]));
        assert_eq!(a1.prefix, b1.prefix, "same system prompt, same routing key");
        assert_eq!(
            a1.conversation, a3.conversation,
            "same conversation across turns"
        );
        assert_ne!(a1.conversation, b1.conversation);
        assert!(a1.conversation.is_some());
    }

    #[test]
    fn short_prompts_spread_and_empty_prompts_have_no_key() {
        assert_ne!(completion_key(r#""one""#), completion_key(r#""two""#));
        assert_eq!(completion_key(r#""""#), None);
        assert_eq!(chat_key("[]", PrefixSpec::default()), None);
        assert_eq!(
            completion_key(r#"["first","second"]"#),
            completion_key(r#""first""#)
        );
        assert!(completion_key("[1,2,3]").is_some());
    }

    #[test]
    fn escapes_and_parts_read_as_text() {
        let spec = PrefixSpec::default();
        let plain = chat_key(r#"[{"role":"user","content":"a\nb"}]"#, spec);
        let parts = chat_key(
            r#"[{"role":"user","content":[{"type":"text","text":"a\nb"}]}]"#,
            spec,
        );
        assert_eq!(plain, parts);
        assert!(plain.is_some());
    }

    #[test]
    fn the_key_is_a_stable_function_of_the_bytes() {
        // Pinned value: the key must not change between versions or processes.
        let key = completion_key(r#""The capital of France is""#);
        assert_eq!(key, completion_key(r#""The capital of France is""#));
        let text = "The capital of France is";
        let mut chain = Chain::new(PrefixSpec::default(), "m");
        chain.push(text.as_bytes());
        let expected =
            xxhash_rust::xxh3::xxh3_64_with_seed(text.as_bytes(), xxhash_rust::xxh3::xxh3_64(b"m"));
        assert_eq!(chain.finish(), Some(expected));
        assert_eq!(key, Some(expected));
    }

    proptest! {
        /// Splitting the same bytes differently across pushes never changes the key.
        #[test]
        fn chunking_does_not_change_the_key(text in ".{0,3000}", cut in 0usize..3000) {
            let bytes = text.as_bytes();
            let cut = cut.min(bytes.len());
            let mut whole = Chain::new(PrefixSpec::default(), "m");
            whole.push(bytes);
            let mut split = Chain::new(PrefixSpec::default(), "m");
            split.push(&bytes[..cut]);
            split.push(&bytes[cut..]);
            prop_assert_eq!(whole.finish(), split.finish());
        }

        /// Bytes past `prefix_chars` never matter.
        #[test]
        fn only_the_prefix_matters(head in "[a-z]{1024}", a in "[a-z]{0,100}", b in "[a-z]{0,100}") {
            let key = |tail: &str| completion_key(&format!("\"{head}{tail}\""));
            prop_assert_eq!(key(&a), key(&b));
        }
    }
}
