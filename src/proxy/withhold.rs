//! The client-side view of a stream whose `include_usage` the gateway injected: the usage-only
//! event is withheld, and everything else reaches the client as the backend would have sent it
//! without the injection.
//!
//! Only whole events are released (a trailing partial event waits for its end, normally within
//! the same burst); bytes are sliced out of the upstream frames, not copied. One backend quirk
//! needs more: vLLM writes `system_fingerprint` on finish chunks only when `include_usage` is
//! off, and on the usage chunk when it is on. So for vLLM pools, finish chunks are held until the
//! usage chunk arrives (it follows them directly) and its fingerprint is spliced back as their
//! last key, which is exactly where vLLM puts it. If no usage chunk comes, they are released
//! unchanged before `[DONE]` or the end of the stream.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

/// What to do with one complete event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Release it.
    Pass,
    /// Hold it until the usage event (a finish chunk of a vLLM stream).
    HoldFinish,
    /// Drop it: the injected usage-only event.
    Withhold,
    /// Release held finish chunks first, then this (`[DONE]`, errors).
    Flush,
}

/// Withheld-mode state of one stream.
#[derive(Debug, Default)]
pub struct Withholder {
    /// Bytes of an event whose end has not arrived yet.
    partial: Vec<Bytes>,
    /// Finish chunks waiting for the usage event's fingerprint.
    held: Vec<Bytes>,
}

impl Withholder {
    /// Takes one upstream frame and the events it completes (`(end offset, action)`, in order),
    /// queueing the bytes the client should get in `out`. Consecutive released events go out
    /// as one slice of the frame; nothing is allocated unless an event spans frames or a finish
    /// chunk is held.
    pub fn frame(&mut self, data: &Bytes, events: &[(usize, Action)], out: &mut VecDeque<Bytes>) {
        // `run` is the start of a stretch of released events not yet queued.
        let mut run: Option<usize> = None;
        let mut start = 0;
        for &(end, action) in events {
            if action == Action::Pass && self.partial.is_empty() {
                run.get_or_insert(start);
                start = end;
                continue;
            }
            if let Some(from) = run.take() {
                out.push_back(data.slice(from..start));
            }
            let event = self.take_event(data.slice(start..end));
            match action {
                Action::Pass => out.push_back(event),
                Action::Flush => {
                    out.extend(self.held.drain(..));
                    out.push_back(event);
                }
                Action::HoldFinish => self.held.push(event),
                Action::Withhold => {
                    let fingerprint = fingerprint_of(&event);
                    for finish in self.held.drain(..) {
                        out.push_back(match &fingerprint {
                            Some(fp) => with_fingerprint(&finish, fp),
                            None => finish,
                        });
                    }
                }
            }
            start = end;
        }
        if let Some(from) = run {
            out.push_back(data.slice(from..start));
        }
        if start < data.len() {
            self.partial.push(data.slice(start..));
        }
    }

    /// A complete event: its bytes from earlier frames (if any) followed by `last`.
    fn take_event(&mut self, last: Bytes) -> Bytes {
        if self.partial.is_empty() {
            return last;
        }
        self.partial.push(last);
        let event = concat(&self.partial);
        self.partial.clear();
        event
    }

    /// The stream ended: release whatever is held or partial, unchanged.
    pub fn end(&mut self, out: &mut VecDeque<Bytes>) {
        out.extend(self.held.drain(..));
        out.extend(self.partial.drain(..));
    }

    /// The stream failed: held finish chunks are released; a partial event (never sent) is
    /// dropped.
    pub fn fail(&mut self, out: &mut VecDeque<Bytes>) {
        out.extend(self.held.drain(..));
        self.partial.clear();
    }
}

fn concat(pieces: &[Bytes]) -> Bytes {
    match pieces {
        [one] => one.clone(),
        many => many.concat().into(),
    }
}

#[derive(Deserialize)]
struct FingerprintView<'a> {
    #[serde(default, borrow)]
    system_fingerprint: Option<&'a RawValue>,
}

/// The raw `system_fingerprint` JSON value of an SSE event, if it has one.
fn fingerprint_of(event: &[u8]) -> Option<Bytes> {
    let text = std::str::from_utf8(event).ok()?;
    let payload = text.trim().strip_prefix("data:")?.trim();
    let view: FingerprintView<'_> = serde_json::from_str(payload).ok()?;
    let raw = view.system_fingerprint?.get();
    (raw != "null").then(|| Bytes::copy_from_slice(raw.as_bytes()))
}

/// `finish` with `,"system_fingerprint":<fp>` inserted before its closing brace, unless it
/// already has one.
fn with_fingerprint(finish: &Bytes, fingerprint: &[u8]) -> Bytes {
    let has = finish.windows(20).any(|w| w == br#""system_fingerprint""#);
    let Some(close) = finish.iter().rposition(|&b| b == b'}') else {
        return finish.clone();
    };
    if has {
        return finish.clone();
    }
    let mut out = BytesMut::with_capacity(finish.len() + fingerprint.len() + 24);
    out.extend_from_slice(&finish[..close]);
    out.extend_from_slice(br#","system_fingerprint":"#);
    out.extend_from_slice(fingerprint);
    out.extend_from_slice(&finish[close..]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FINISH: &str = "data: {\"id\":\"x\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\"},\"finish_reason\":\"stop\"}]}\n\n";
    const USAGE: &str = "data: {\"id\":\"x\",\"choices\":[],\"usage\":{\"prompt_tokens\":1},\"system_fingerprint\":\"vllm-0.32.0-abcd\"}\n\n";
    const DONE: &str = "data: [DONE]\n\n";

    fn run(pieces: &[(&str, &[Action])]) -> String {
        let mut w = Withholder::default();
        let mut out = VecDeque::new();
        for (text, actions) in pieces {
            let data = Bytes::copy_from_slice(text.as_bytes());
            // Event ends: after each "\n\n" in this piece, matched with the given actions.
            let ends: Vec<usize> = text.match_indices("\n\n").map(|(i, _)| i + 2).collect();
            let events: Vec<(usize, Action)> =
                ends.into_iter().zip(actions.iter().copied()).collect();
            w.frame(&data, &events, &mut out);
        }
        w.end(&mut out);
        out.iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[test]
    fn the_fingerprint_returns_to_the_finish_chunk() {
        let got = run(&[(
            &format!("{FINISH}{USAGE}{DONE}"),
            &[Action::HoldFinish, Action::Withhold, Action::Flush],
        )]);
        let expected = FINISH.replace(
            "}]}\n\n",
            "}],\"system_fingerprint\":\"vllm-0.32.0-abcd\"}\n\n",
        );
        assert_eq!(got, format!("{expected}{DONE}"));
    }

    #[test]
    fn events_split_across_frames_are_reassembled() {
        let all = format!("{FINISH}{USAGE}{DONE}");
        let (a, b) = all.split_at(30);
        let got = run(&[
            (a, &[]),
            (b, &[Action::HoldFinish, Action::Withhold, Action::Flush]),
        ]);
        assert!(
            got.contains("\"system_fingerprint\":\"vllm-0.32.0-abcd\"}\n\ndata: [DONE]"),
            "{got}"
        );
        assert!(!got.contains("usage"));
    }

    #[test]
    fn without_a_usage_event_held_chunks_pass_unchanged() {
        let got = run(&[(
            &format!("{FINISH}{DONE}"),
            &[Action::HoldFinish, Action::Flush],
        )]);
        assert_eq!(got, format!("{FINISH}{DONE}"));
    }
}
