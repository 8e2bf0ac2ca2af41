//! What a run leaves on disk: the run directory, one `requests.jsonl` line per request, and an
//! append-only JSONL writer that never loses a finished line.
//!
//! Every line is serialised first and then written with one `write_all` on a file opened for
//! appending, straight to the OS (no user-space buffer), so a crash or an aborted task leaves
//! only whole lines behind, except possibly one torn last line, which [`JsonlWriter::open`]
//! cuts off before appending. This is what makes the `file` workload resumable.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// How a request failed (a closed set, one column in `requests.jsonl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// The TCP connection could not be made.
    Connect,
    /// The per-request deadline passed.
    Timeout,
    /// HTTP 429.
    RateLimited,
    /// Another 4xx status.
    #[serde(rename = "http_4xx")]
    Http4xx,
    /// A 5xx status.
    #[serde(rename = "http_5xx")]
    Http5xx,
    /// An `{"error": ...}` event inside a stream.
    ErrorEvent,
    /// The stream ended without `data: [DONE]`.
    Truncated,
    /// The connection failed after the request was sent (reset, closed mid-body).
    Reset,
    /// A 2xx body that is not an OpenAI response.
    InvalidBody,
}

impl ErrorClass {
    /// The JSON / table spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout => "timeout",
            Self::RateLimited => "rate_limited",
            Self::Http4xx => "http_4xx",
            Self::Http5xx => "http_5xx",
            Self::ErrorEvent => "error_event",
            Self::Truncated => "truncated",
            Self::Reset => "reset",
            Self::InvalidBody => "invalid_body",
        }
    }

    /// The class of a non-2xx status.
    pub fn of_status(status: u16) -> Option<Self> {
        match status {
            200..=299 => None,
            429 => Some(Self::RateLimited),
            500..=599 => Some(Self::Http5xx),
            _ => Some(Self::Http4xx),
        }
    }
}

/// One request as measured by the client (one line of `requests.jsonl`). Times in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestResult {
    /// Target name.
    pub target: String,
    /// Request id within the run (`r000042`, `s3t2`, or the file workload's id).
    pub id: String,
    /// The `x-request-id` sent (joins with the gateway's request log).
    pub request_id: String,
    /// Conversation, for `multi_turn`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<u32>,
    /// Turn within the conversation (0-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn: Option<u32>,
    /// When it was sent, since the target's measured phase began.
    pub start_s: f64,
    /// When it ended, on the same clock.
    pub end_s: f64,
    /// HTTP status (0 when no response head arrived).
    pub status: u16,
    /// 2xx, no error event, and (streams) `[DONE]` seen.
    pub ok: bool,
    /// Why not, when not ok.
    pub error: Option<ErrorClass>,
    /// The request asked for a stream.
    pub stream: bool,
    /// Sent → first data event with `choices` (non-streaming: first body byte).
    pub ttfb_s: Option<f64>,
    /// Sent → first content event.
    pub ttft_s: Option<f64>,
    /// Sent → last byte.
    pub e2e_s: f64,
    /// (E2E − TTFT) / (output tokens − 1).
    pub tpot_s: Option<f64>,
    /// Every gap between content events.
    pub itl_s: Vec<f64>,
    /// `usage.prompt_tokens`.
    pub prompt_tokens: Option<u64>,
    /// `usage.prompt_tokens_details.cached_tokens`.
    pub cached_tokens: Option<u64>,
    /// `usage.completion_tokens` (or the content-event count, then flagged).
    pub output_tokens: Option<u64>,
    /// `output_tokens` is a count of content events.
    pub output_tokens_estimated: bool,
    /// Finish reason of choice 0.
    pub finish_reason: Option<String>,
    /// Data events with choices.
    pub chunks: u32,
    /// Content-bearing events.
    pub content_events: u32,
}

/// Why the results could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    /// A file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A line did not serialise or parse.
    #[error("{path} line {line}: {source}")]
    Json {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// The parser's message.
        source: serde_json::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ResultsError + '_ {
    move |source| ResultsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An append-only JSONL file shared by concurrent requests.
#[derive(Debug)]
pub struct JsonlWriter {
    path: PathBuf,
    file: Mutex<File>,
}

impl JsonlWriter {
    /// Opens `path` for appending (creating it), first cutting off a torn last line.
    pub fn open(path: &Path) -> Result<Self, ResultsError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let mut file = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)
            .map_err(io(path))?;
        cut_torn_line(&mut file).map_err(io(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    /// Writes one value as one line, straight to the OS.
    pub fn write<T: Serialize>(&self, value: &T) -> Result<(), ResultsError> {
        let mut line = serde_json::to_vec(value).map_err(|source| ResultsError::Json {
            path: self.path.clone(),
            line: 0,
            source,
        })?;
        line.push(b'\n');
        let mut file = self.file.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all(&line).map_err(io(&self.path))?;
        file.flush().map_err(io(&self.path))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Truncates the file after its last `\n` (a crash mid-write leaves a partial line).
fn cut_torn_line(file: &mut File) -> std::io::Result<()> {
    let len = file.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    let mut keep = len;
    let mut buf = [0u8; 4096];
    while keep > 0 {
        let start = keep.saturating_sub(buf.len() as u64);
        let chunk = &mut buf[..(keep - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(chunk)?;
        if let Some(i) = chunk.iter().rposition(|b| *b == b'\n') {
            keep = start + i as u64 + 1;
            break;
        }
        keep = start;
    }
    if keep < len {
        file.set_len(keep)?;
    }
    Ok(())
}

/// Reads every line of a JSONL file of `T`.
pub fn read_jsonl<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<Vec<T>, ResultsError> {
    let text = std::fs::read_to_string(path).map_err(io(path))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|source| ResultsError::Json {
                path: path.to_path_buf(),
                line: i + 1,
                source,
            })
        })
        .collect()
}

/// Creates `parent/<id>` for a new run: `id` when given, else `<name>-<UTC timestamp>`, with
/// `-2`, `-3`, ... appended when the directory exists.
pub fn create_run_dir(
    parent: &Path,
    name: &str,
    id: Option<&str>,
) -> Result<(String, PathBuf), ResultsError> {
    std::fs::create_dir_all(parent).map_err(io(parent))?;
    let base = id.map_or_else(
        || format!("{name}-{}", utc_stamp(SystemTime::now())),
        String::from,
    );
    for n in 1u32.. {
        let id = if n == 1 {
            base.clone()
        } else {
            format!("{base}-{n}")
        };
        let dir = parent.join(&id);
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok((id, dir)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(&dir)(e)),
        }
    }
    Err(io(parent)(std::io::Error::other(
        "no free run directory name",
    )))
}

/// `YYYYMMDD-HHMMSS` in UTC.
pub fn utc_stamp(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn error_classes_serialise_as_their_names() {
        for class in [
            ErrorClass::Http4xx,
            ErrorClass::Http5xx,
            ErrorClass::RateLimited,
        ] {
            let json = serde_json::to_value(class).expect("serialisable");
            assert_eq!(json, class.as_str());
        }
    }

    #[test]
    fn utc_stamps() {
        assert_eq!(utc_stamp(UNIX_EPOCH), "19700101-000000");
        let t = UNIX_EPOCH + Duration::from_secs(1_763_800_000);
        assert_eq!(utc_stamp(t), "20251122-082640");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(utc_stamp(leap), "20000229-000000");
    }

    #[test]
    fn a_torn_last_line_is_cut_before_appending() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("out.jsonl");
        std::fs::write(&path, "{\"a\":1}\n{\"a\":2}\n{\"a\":").expect("write");
        let writer = JsonlWriter::open(&path).expect("open");
        writer.write(&serde_json::json!({"a": 3})).expect("write");
        let lines: Vec<serde_json::Value> = read_jsonl(&path).expect("read");
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["a"], 3);
        std::fs::write(&path, "{\"a\":").expect("write");
        drop(JsonlWriter::open(&path).expect("open"));
        assert_eq!(std::fs::read(&path).expect("read").len(), 0);
    }

    #[test]
    fn run_dirs_never_collide() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, _) = create_run_dir(dir.path(), "x", Some("run")).expect("first");
        let (b, path) = create_run_dir(dir.path(), "x", Some("run")).expect("second");
        assert_eq!((a.as_str(), b.as_str()), ("run", "run-2"));
        assert!(path.is_dir());
    }
}
