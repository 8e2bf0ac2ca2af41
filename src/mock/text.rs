//! The mock's stand-in for a tokenizer and a model: prompt rendering, token counts, and
//! deterministic generated text.
//!
//! - A chat prompt is rendered like a chat template, one `<|role|>\ncontent\n` per message plus
//!   the generation prompt `<|assistant|>\n`. Rendering is prefix-stable: the prompt of turn k+1
//!   starts with the prompt of turn k followed by the assistant's reply, so a multi-turn
//!   conversation hits the prefix cache the way it does on a real engine.
//! - A token is ~4 bytes of text: `prompt_tokens = ceil(bytes / 4)`, and cache blocks are
//!   `4 × block_tokens` bytes.
//! - Generated tokens are word pieces drawn from a fixed vocabulary by a splitmix64 stream seeded
//!   from (server seed, request seed, prompt, choice index): the same request gives the same text.

/// Bytes per simulated token.
pub const BYTES_PER_TOKEN: usize = 4;

/// Word pieces the mock "generates" (each about one token).
const VOCAB: &[&str] = &[
    " the", " of", " and", " to", " in", " a", " is", " that", " for", " it", " as", " with",
    " was", " on", " be", " by", " this", " are", " from", " at", " model", " token", " cache",
    " prefix", " latency", " batch", " GPU", " request", " stream", " layer", " weight", " data",
    " time", " first", " next", " each", " can", " will", " more", " than", " when", " which", ".",
    ",", " very", " fast", " slow", " Paris", " queue", " route",
];

/// Renders chat messages (role, content) as the prompt text the engine would see.
pub fn render_chat<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (role, content) in messages {
        out.push_str("<|");
        out.push_str(role);
        out.push_str("|>\n");
        out.push_str(content);
        out.push('\n');
    }
    out.push_str("<|assistant|>\n");
    out
}

/// Simulated token count of a text.
pub fn count_tokens(text: &str) -> u64 {
    text.len().div_ceil(BYTES_PER_TOKEN) as u64
}

use crate::rng::Rng;

/// Deterministic text generation for one choice.
#[derive(Debug, Clone)]
pub struct Generator {
    rng: Rng,
}

impl Generator {
    /// A generator for (server seed, request seed, prompt, choice index).
    pub fn new(server_seed: u64, request_seed: Option<u64>, prompt: &str, index: u32) -> Self {
        let mut h = xxhash_rust::xxh3::xxh3_64_with_seed(prompt.as_bytes(), server_seed);
        h ^= request_seed.unwrap_or(0).rotate_left(17);
        h ^= u64::from(index).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Self { rng: Rng::new(h) }
    }

    /// The natural length of this answer (when the model would emit EOS), in `lo..=hi` tokens.
    pub fn natural_length(&mut self, lo: u64, hi: u64) -> u64 {
        self.rng.between(lo, hi)
    }

    /// The next token's text.
    pub fn next_token(&mut self) -> &'static str {
        VOCAB[(self.rng.next_u64() % VOCAB.len() as u64) as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_rendering_is_prefix_stable_across_turns() {
        let turn1 = render_chat([("system", "be brief"), ("user", "hi")]);
        let reply = " hello there";
        let turn2 = render_chat([
            ("system", "be brief"),
            ("user", "hi"),
            ("assistant", reply),
            ("user", "again"),
        ]);
        assert!(turn2.starts_with(&format!("{turn1}{reply}")));
    }

    #[test]
    fn tokens_are_about_four_bytes() {
        assert_eq!(count_tokens(""), 0);
        assert_eq!(count_tokens("abcd"), 1);
        assert_eq!(count_tokens("abcde"), 2);
    }

    #[test]
    fn generation_is_deterministic_per_seed_and_index() {
        let take = |seed, index| {
            let mut g = Generator::new(seed, None, "prompt", index);
            (0..8).map(|_| g.next_token()).collect::<String>()
        };
        assert_eq!(take(1, 0), take(1, 0));
        assert_ne!(take(1, 0), take(2, 0));
        assert_ne!(take(1, 0), take(1, 1));
    }
}
