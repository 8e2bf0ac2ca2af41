//! The JSONL request log: one line per finished request, written off the request path.
//!
//! The request path serialises the record and hands the line to a channel; a dedicated thread
//! appends lines to the file, flushes whenever the channel runs dry, and rotates the file to
//! `<file>.1` when it passes `log.max_bytes`. A slow disk therefore never stalls a stream. Prompt
//! text is never part of a record.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use crate::telemetry::record::RequestRecord;

/// Handle to the log writer thread.
#[derive(Debug)]
pub struct RequestLog {
    lines: mpsc::Sender<Message>,
}

/// What the writer thread receives.
#[derive(Debug)]
enum Message {
    /// One serialised record, newline included.
    Line(Vec<u8>),
    /// Answer once everything queued before this is on disk.
    Flushed(tokio::sync::oneshot::Sender<()>),
}

impl RequestLog {
    /// Opens (appending) `path` and starts the writer thread.
    pub fn open(path: &Path, max_bytes: Option<u64>) -> std::io::Result<Self> {
        let file = open_append(path)?;
        let written = file.metadata()?.len();
        let (lines, rx) = mpsc::channel::<Message>();
        let writer = Writer {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            written,
            max_bytes,
        };
        std::thread::Builder::new()
            .name("servelens-request-log".into())
            .spawn(move || writer.run(rx))?;
        Ok(Self { lines })
    }

    /// Queues one record (never blocks the caller).
    pub fn write(&self, record: &RequestRecord) {
        match serde_json::to_vec(record) {
            Ok(mut line) => {
                line.push(b'\n');
                // The writer thread only stops when the process exits.
                let _ = self.lines.send(Message::Line(line));
            }
            Err(e) => tracing::warn!(error = %e, "request record not serialisable"),
        }
    }

    /// Resolves once every record queued so far has been written and flushed.
    pub async fn flushed(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.lines.send(Message::Flushed(tx)).is_ok() {
            let _ = rx.await;
        }
    }
}

struct Writer {
    path: PathBuf,
    out: BufWriter<File>,
    written: u64,
    max_bytes: Option<u64>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Message>) {
        let mut waiting = Vec::new();
        while let Ok(first) = rx.recv() {
            for message in std::iter::once(first).chain(rx.try_iter()) {
                match message {
                    Message::Line(line) => self.append(&line),
                    Message::Flushed(done) => waiting.push(done),
                }
            }
            if let Err(e) = self.out.flush() {
                tracing::warn!(error = %e, path = %self.path.display(), "request log flush failed");
            }
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
        }
        let _ = self.out.flush();
    }

    fn append(&mut self, line: &[u8]) {
        if self
            .max_bytes
            .is_some_and(|max| self.written > 0 && self.written + line.len() as u64 > max)
        {
            if let Err(e) = self.rotate() {
                tracing::warn!(error = %e, path = %self.path.display(), "request log rotation failed");
            }
        }
        match self.out.write_all(line) {
            Ok(()) => self.written += line.len() as u64,
            Err(e) => {
                tracing::warn!(error = %e, path = %self.path.display(), "request log write failed")
            }
        }
    }

    fn rotate(&mut self) -> std::io::Result<()> {
        self.out.flush()?;
        let mut rotated = self.path.clone().into_os_string();
        rotated.push(".1");
        std::fs::rename(&self.path, rotated)?;
        self.out = BufWriter::new(open_append(&self.path)?);
        self.written = 0;
        Ok(())
    }
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}
