//! The mock's configuration: which framework it imitates, its latency model, its prefix cache
//! and default faults. Every field has a default; `servelens mock` flags set the common ones and
//! `--config FILE` (TOML, same shape) sets any.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::mock::faults::Faults;

/// Which server the mock imitates on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum MockFramework {
    /// vLLM 0.32's OpenAI server.
    Vllm,
    /// SGLang 0.5's server (OpenAI endpoints and native `/generate`).
    Sglang,
}

impl MockFramework {
    /// The config / label spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vllm => "vllm",
            Self::Sglang => "sglang",
        }
    }
}

/// Everything about one simulated replica.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MockConfig {
    /// The imitated framework.
    #[serde(default = "default_framework")]
    pub framework: MockFramework,
    /// Where to listen (`127.0.0.1:0` picks a free port).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The served model name.
    #[serde(default = "default_model")]
    pub model: String,
    /// Which replica this is (in ids, the `x-mock-replica` header and logs).
    #[serde(default)]
    pub replica_id: u32,
    /// Seed of generated text and ids.
    #[serde(default)]
    pub seed: u64,
    /// Context length: prompt + max_tokens beyond it is refused with 400, as vLLM does.
    #[serde(default = "default_max_model_len")]
    pub max_model_len: u64,
    /// Report `usage.prompt_tokens_details.cached_tokens` (vLLM `--enable-prompt-tokens-details`,
    /// SGLang `--enable-cache-report`).
    #[serde(default = "yes")]
    pub report_cached_tokens: bool,
    /// The latency model.
    #[serde(default)]
    pub latency: LatencyModel,
    /// How long answers are when `max_tokens` does not cut them.
    #[serde(default)]
    pub output: OutputLength,
    /// The prefix KV cache.
    #[serde(default)]
    pub cache: CacheConfig,
    /// Faults applied to every request (a request's `x-mock-fault` header overrides).
    #[serde(default)]
    pub faults: Faults,
}

fn default_framework() -> MockFramework {
    MockFramework::Vllm
}
fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8000))
}
fn default_model() -> String {
    "meta-llama/Llama-3.1-8B-Instruct".to_string()
}
fn default_max_model_len() -> u64 {
    32768
}
fn yes() -> bool {
    true
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            framework: default_framework(),
            listen: default_listen(),
            model: default_model(),
            replica_id: 0,
            seed: 0,
            max_model_len: default_max_model_len(),
            report_cached_tokens: true,
            latency: LatencyModel::default(),
            output: OutputLength::default(),
            cache: CacheConfig::default(),
            faults: Faults::default(),
        }
    }
}

impl MockConfig {
    /// A config for `framework` on `127.0.0.1:0` (tests, demo).
    pub fn local(framework: MockFramework) -> Self {
        Self {
            framework,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            ..Self::default()
        }
    }
}

/// The latency model of continuous batching.
///
/// TTFT = queue wait (for a free slot among `max_num_seqs`) + `ttft_base` + `prefill_per_token` ×
/// uncached prompt tokens. Each decode step takes `itl_base` + `itl_per_seq` × (running
/// sequences − 1) and yields `tokens_per_step` tokens per sequence (1, or more for
/// speculative-style multi-token chunks).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LatencyModel {
    /// Sequences decoding at once; more wait in a FIFO queue.
    #[serde(default = "default_max_num_seqs")]
    pub max_num_seqs: usize,
    /// Fixed prefill cost.
    #[serde(default = "default_ttft_base", with = "humantime_serde")]
    pub ttft_base: Duration,
    /// Prefill cost per uncached prompt token.
    #[serde(default = "default_prefill_per_token", with = "humantime_serde")]
    pub prefill_per_token: Duration,
    /// Decode step with one running sequence.
    #[serde(default = "default_itl_base", with = "humantime_serde")]
    pub itl_base: Duration,
    /// Extra decode step time per additional running sequence.
    #[serde(default = "default_itl_per_seq", with = "humantime_serde")]
    pub itl_per_seq: Duration,
    /// Tokens produced per decode step (and per chunk).
    #[serde(default = "one")]
    pub tokens_per_step: u64,
}

fn default_max_num_seqs() -> usize {
    64
}
fn default_ttft_base() -> Duration {
    Duration::from_millis(15)
}
fn default_prefill_per_token() -> Duration {
    Duration::from_micros(50)
}
fn default_itl_base() -> Duration {
    Duration::from_millis(12)
}
fn default_itl_per_seq() -> Duration {
    Duration::from_micros(150)
}
fn one() -> u64 {
    1
}

impl Default for LatencyModel {
    fn default() -> Self {
        Self {
            max_num_seqs: default_max_num_seqs(),
            ttft_base: default_ttft_base(),
            prefill_per_token: default_prefill_per_token(),
            itl_base: default_itl_base(),
            itl_per_seq: default_itl_per_seq(),
            tokens_per_step: 1,
        }
    }
}

impl LatencyModel {
    /// A model with no delays at all (throughput and overhead tests).
    pub fn instant() -> Self {
        Self {
            ttft_base: Duration::ZERO,
            prefill_per_token: Duration::ZERO,
            itl_base: Duration::ZERO,
            itl_per_seq: Duration::ZERO,
            ..Self::default()
        }
    }

    /// Prefill time for `uncached` prompt tokens.
    pub fn prefill(&self, uncached: u64) -> Duration {
        self.ttft_base + mul(self.prefill_per_token, uncached)
    }

    /// One decode step with `running` sequences in the batch.
    pub fn decode_step(&self, running: usize) -> Duration {
        self.itl_base + mul(self.itl_per_seq, running.saturating_sub(1) as u64)
    }
}

fn mul(d: Duration, n: u64) -> Duration {
    d.saturating_mul(u32::try_from(n).unwrap_or(u32::MAX))
}

/// The natural answer length (where the model would stop on its own), uniform in `min..=max`
/// tokens per request (deterministic under the seed). `max_tokens` cuts it; `ignore_eos` makes
/// the answer exactly `max_tokens`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OutputLength {
    /// Shortest natural answer.
    #[serde(default = "default_min_output")]
    pub min: u64,
    /// Longest natural answer.
    #[serde(default = "default_max_output")]
    pub max: u64,
}

fn default_min_output() -> u64 {
    32
}
fn default_max_output() -> u64 {
    256
}

impl Default for OutputLength {
    fn default() -> Self {
        Self {
            min: default_min_output(),
            max: default_max_output(),
        }
    }
}

/// The prefix KV cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// Tokens per KV block (vLLM's default is 16).
    #[serde(default = "default_block_tokens")]
    pub block_tokens: usize,
    /// Blocks the replica holds (cached + in use); 0 disables prefix caching.
    #[serde(default = "default_capacity_blocks")]
    pub capacity_blocks: usize,
}

fn default_block_tokens() -> usize {
    16
}
fn default_capacity_blocks() -> usize {
    8192
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            block_tokens: default_block_tokens(),
            capacity_blocks: default_capacity_blocks(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_reference_config_parses_to_the_defaults() {
        let text = include_str!("../../config/mock.toml");
        let config: MockConfig = toml::from_str(text).expect("config/mock.toml is valid");
        let defaults = MockConfig::default();
        assert_eq!(config.latency, defaults.latency);
        assert_eq!(config.output, defaults.output);
        assert_eq!(config.cache, defaults.cache);
        assert_eq!(config.listen, defaults.listen);
        assert_eq!(config.faults, defaults.faults);
    }

    #[test]
    fn latency_model_arithmetic() {
        let m = LatencyModel::default();
        assert_eq!(
            m.prefill(100),
            Duration::from_millis(15) + Duration::from_micros(5000)
        );
        assert_eq!(m.decode_step(1), Duration::from_millis(12));
        assert_eq!(
            m.decode_step(11),
            Duration::from_millis(12) + Duration::from_micros(1500)
        );
    }
}
