//! Synthetic prompts and lengths, deterministic by seed: no dataset, no download.
//!
//! Text is drawn word by word from a fixed vocabulary until it reaches `4 × tokens` bytes (the
//! usual ~4 characters per token of English BPE vocabularies, and the mock's own rule), so a
//! requested length is close to what a real tokenizer counts. Randomness is [`crate::rng`]'s
//! splitmix64, so a seed gives the same prompts in every version of servelens.

use crate::bench::experiment::Length;
pub use crate::rng::Rng;

/// Bytes of synthetic text per requested token.
pub const BYTES_PER_TOKEN: usize = 4;

/// Words synthetic prompts are made of.
const WORDS: &[&str] = &[
    "the", "model", "answer", "question", "data", "system", "time", "first", "value", "number",
    "people", "water", "world", "light", "history", "energy", "market", "city", "river", "paper",
    "music", "theory", "process", "language", "result", "method", "signal", "network", "memory",
    "policy", "garden", "window", "engine", "planet", "forest", "ocean", "letter", "picture",
    "simple", "quick", "large", "small", "early", "recent", "common", "public", "local", "strong",
    "explain", "describe", "compare", "write", "list", "show", "find", "build", "measure", "read",
    "and", "of", "to", "in", "for", "with", "on", "by", "from", "about", "between", "after",
];

/// Draws a length from a distribution.
pub fn sample_length(length: &Length, rng: &mut Rng) -> u32 {
    match *length {
        Length::Fixed { tokens } => tokens,
        Length::Uniform { min, max } => min + rng.below(u64::from(max - min) + 1) as u32,
        Length::Normal {
            mean,
            std,
            min,
            max,
        } => {
            let x = (mean + std * rng.normal()).round();
            x.clamp(f64::from(min), f64::from(max)) as u32
        }
    }
}

/// About `tokens` tokens of text (`4 × tokens` bytes, cut at a word).
pub fn text(rng: &mut Rng, tokens: u32) -> String {
    let target = tokens as usize * BYTES_PER_TOKEN;
    let mut out = String::with_capacity(target + 12);
    while out.len() < target {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(WORDS[rng.below(WORDS.len() as u64) as usize]);
    }
    out.truncate(target.max(1));
    out
}

/// A user question of about `tokens` tokens, numbered so no two are the same.
pub fn question(rng: &mut Rng, index: u64, tokens: u32) -> String {
    let head = format!("Question {index}: ");
    let body_tokens = tokens
        .saturating_sub((head.len() / BYTES_PER_TOKEN) as u32)
        .max(1);
    head + &text(rng, body_tokens)
}

/// A system prompt of about `tokens` tokens, the same for the same `(seed, index)`.
pub fn system_prompt(seed: u64, index: u64, tokens: u32) -> String {
    let mut rng = Rng::derive(seed, 0x5157, index);
    let head = format!("You are assistant {index}. Follow these instructions. ");
    let body_tokens = tokens
        .saturating_sub((head.len() / BYTES_PER_TOKEN) as u32)
        .max(1);
    head + &text(&mut rng, body_tokens)
}

/// A tool-result-like message of about `tokens` tokens (the agentic multi-turn shape).
pub fn tool_result(rng: &mut Rng, call: u64, tokens: u32) -> String {
    let head = format!("{{\"tool\":\"search\",\"call\":{call},\"result\":\"");
    let body_tokens = tokens
        .saturating_sub(((head.len() + 2) / BYTES_PER_TOKEN) as u32)
        .max(1);
    head + &text(rng, body_tokens) + "\"}"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_text_and_lengths_match() {
        let a = text(&mut Rng::derive(7, 1, 3), 100);
        let b = text(&mut Rng::derive(7, 1, 3), 100);
        let c = text(&mut Rng::derive(7, 1, 4), 100);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(a.len(), 400);
        assert_eq!(system_prompt(1, 2, 256).len(), 1024);
    }

    #[test]
    fn lengths_stay_in_their_range() {
        let mut rng = Rng::new(1);
        let uniform = Length::Uniform { min: 5, max: 9 };
        let normal = Length::Normal {
            mean: 100.0,
            std: 50.0,
            min: 60,
            max: 120,
        };
        let mut seen = [false; 5];
        for _ in 0..1000 {
            let u = sample_length(&uniform, &mut rng);
            assert!((5..=9).contains(&u));
            seen[(u - 5) as usize] = true;
            assert!((60..=120).contains(&sample_length(&normal, &mut rng)));
        }
        assert!(seen.iter().all(|s| *s), "every value of the range is drawn");
    }

    #[test]
    fn exponential_has_the_right_mean() {
        let mut rng = Rng::new(3);
        let n = 100_000;
        let mean = (0..n).map(|_| rng.exponential(4.0)).sum::<f64>() / f64::from(n);
        assert!((mean - 0.25).abs() < 0.005, "mean {mean}");
    }
}
