//! Fault injection: what can go wrong with a request, set in the config for every request or per
//! request with the `x-mock-fault` header, e.g. `x-mock-fault: status=503` or
//! `x-mock-fault: slow_first_byte=2s, error_after=3`.
//!
//! | fault | wire behaviour |
//! |---|---|
//! | `status=500\|503\|429` | an HTTP error in the framework's own body shape (429 and 503 carry `Retry-After: 1`) |
//! | `error_after=K` | after K token chunks, a mid-stream error event in the framework's shape, then `[DONE]` (non-streaming: HTTP 500) |
//! | `drop_after=K` | after K token chunks the connection is cut (no terminating chunk, no `[DONE]`) |
//! | `stall_after=K` | after K token chunks nothing more is sent; the request holds its slot until the client leaves |
//! | `slow_first_byte=D` | the response head is sent only after D (e.g. `1500ms`) |

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The header that sets faults per request.
pub const FAULT_HEADER: &str = "x-mock-fault";

/// A set of faults (all optional).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Faults {
    /// Answer with this HTTP error status instead of generating.
    #[serde(default)]
    pub status: Option<u16>,
    /// Mid-stream error event after this many token chunks.
    #[serde(default)]
    pub error_after: Option<u64>,
    /// Cut the connection after this many token chunks.
    #[serde(default)]
    pub drop_after: Option<u64>,
    /// Stop sending after this many token chunks.
    #[serde(default)]
    pub stall_after: Option<u64>,
    /// Delay before the response head.
    #[serde(default, with = "humantime_serde")]
    pub slow_first_byte: Option<Duration>,
}

/// A malformed fault header.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad {FAULT_HEADER} `{0}`: expected key=value pairs of status, error_after, drop_after, stall_after, slow_first_byte")]
pub struct FaultParseError(pub String);

impl Faults {
    /// Parses a header value; `None` when it is absent or empty.
    pub fn parse(header: &str) -> Result<Self, FaultParseError> {
        let mut faults = Self::default();
        let bad = || FaultParseError(header.to_string());
        for part in header.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=').ok_or_else(bad)?;
            let (key, value) = (key.trim(), value.trim());
            let count = || value.parse::<u64>().map_err(|_| bad());
            match key {
                "status" => {
                    let status = value.parse::<u16>().map_err(|_| bad())?;
                    if !(400..600).contains(&status) {
                        return Err(bad());
                    }
                    faults.status = Some(status);
                }
                "error_after" => faults.error_after = Some(count()?),
                "drop_after" => faults.drop_after = Some(count()?),
                "stall_after" => faults.stall_after = Some(count()?),
                "slow_first_byte" => {
                    faults.slow_first_byte =
                        Some(humantime::parse_duration(value).map_err(|_| bad())?)
                }
                _ => return Err(bad()),
            }
        }
        Ok(faults)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_fault() {
        let f = Faults::parse("status=503").expect("valid");
        assert_eq!(f.status, Some(503));
        let f =
            Faults::parse(" slow_first_byte=1500ms , error_after=3,drop_after=2, stall_after=1")
                .expect("valid");
        assert_eq!(f.slow_first_byte, Some(Duration::from_millis(1500)));
        assert_eq!(
            (f.error_after, f.drop_after, f.stall_after),
            (Some(3), Some(2), Some(1))
        );
        assert_eq!(Faults::parse("").expect("empty"), Faults::default());
    }

    #[test]
    fn refuses_nonsense() {
        for bad in [
            "status=200",
            "status=x",
            "boom",
            "explode=1",
            "error_after=-1",
        ] {
            assert!(Faults::parse(bad).is_err(), "{bad}");
        }
    }
}
