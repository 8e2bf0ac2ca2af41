//! The wire fixtures (`tests/fixtures/`, copied from `../shared/fixtures/`): loading them and
//! their expected parses.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::Value;

/// One `.sse` fixture with its `.json` expectation.
pub struct Fixture {
    pub name: String,
    pub sse: Vec<u8>,
    pub expected: Value,
}

impl Fixture {
    /// The request body the fixture was produced for, as JSON text (if the fixture says).
    pub fn request_body(&self) -> Option<String> {
        self.expected.get("request").map(Value::to_string)
    }

    pub fn endpoint(&self) -> &str {
        self.expected["endpoint"]
            .as_str()
            .unwrap_or("/v1/chat/completions")
    }

    pub fn usage(&self) -> Option<(u64, u64, u64)> {
        let u = self.expected.get("usage")?;
        Some((
            u.get("prompt_tokens")?.as_u64()?,
            u.get("completion_tokens")?.as_u64()?,
            u.get("total_tokens")?.as_u64()?,
        ))
    }
}

pub fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Every `.sse` fixture, top level and `real/`.
pub fn all() -> Vec<Fixture> {
    let mut out = Vec::new();
    for folder in [dir(), dir().join("real")] {
        let mut entries: Vec<_> = std::fs::read_dir(&folder)
            .unwrap_or_else(|e| panic!("read {}: {e}", folder.display()))
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "sse"))
            .collect();
        entries.sort();
        for path in entries {
            let sse = std::fs::read(&path).expect("fixture readable");
            let json_path = path.with_extension("json");
            let expected: Value =
                serde_json::from_slice(&std::fs::read(&json_path).expect("expectation readable"))
                    .expect("expectation is JSON");
            let name = path
                .strip_prefix(dir())
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            out.push(Fixture {
                name,
                sse,
                expected,
            });
        }
    }
    assert!(
        out.len() >= 17,
        "expected the full fixture set, found {}",
        out.len()
    );
    out
}

pub fn read(relative: &str) -> Vec<u8> {
    std::fs::read(dir().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"))
}
