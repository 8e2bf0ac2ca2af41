//! servelens: a gateway for LLM inference that times every token.
//!
//! OpenAI clients talk to the gateway; the gateway forwards their requests, byte for byte, to
//! pools of vLLM / SGLang / TGI / llama.cpp / Ollama backends, streams the responses back
//! unchanged and immediately, and measures every request from the SSE stream as it passes.
//!
//! ```text
//! client ──► parse ──► route ──► forward ──► tap ──► client
//!             │          │                    │
//!             │          │                    └─► record: TTFB, TTFT, ITLs, tokens, outcome ─► metrics, JSONL log
//!             │          └─ experiment arm (A/B) ─► pool ─► replica (prefix hash, bounded load)
//!             └─ model, stream, stream_options, prompt prefix borrowed from the body bytes
//! ```
//!
//! # Layout
//! - [`proxy`]: the request path, one module per step ([`proxy::request`], [`proxy::route`],
//!   [`proxy::forward`], [`proxy::tap`]), sequenced only in [`proxy::Gateway::handle`];
//! - [`sse`]: the incremental SSE decoder the tap feeds (pure, no IO);
//! - [`openai`]: the wire vocabulary shared by gateway, mock and bench (endpoints, error bodies,
//!   reading response chunks);
//! - [`telemetry`]: the timeline of a response, the record it becomes, metrics and the JSONL log;
//! - [`config`]: typed TOML configuration; [`error`]: request-path errors and their statuses;
//! - [`server`]: the accept loop; [`admin`]: `/metrics`, `/healthz`, `/readyz`;
//! - [`gateway`]: `servelens serve` as a library call; [`demo`]: `servelens demo`;
//! - [`replay`]: a backend replaying recorded streams on a schedule (tests);
//! - [`routing`]: the pure routing algorithms (prefix key, ring, key placement, A/B split);
//! - [`mock`]: `servelens mock`, a simulated vLLM / SGLang backend;
//! - [`promtext`]: reading Prometheus text pages (backend scrapes);
//! - [`rng`]: the seeded splitmix64 generator of the mock and the bench;
//! - [`bench`]: `servelens bench`, the experiment runner; [`report`]: `servelens report`.
//!
//! `src/main.rs` is a thin clap front; everything runs in-process from the library, which is
//! how the tests drive it on `127.0.0.1:0` with paused time.

pub mod admin;
pub mod bench;
pub mod config;
pub mod demo;
pub mod error;
pub mod gateway;
pub mod mock;
pub mod openai;
pub mod promtext;
pub mod proxy;
pub mod replay;
pub mod report;
pub mod rng;
pub mod routing;
pub mod server;
pub mod sse;
pub mod telemetry;
