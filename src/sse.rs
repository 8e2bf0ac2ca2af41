//! Incremental Server-Sent Events decoder: bytes in, event boundaries and `data` payloads out.
//!
//! The gateway forwards every upstream frame untouched and feeds a *side view* of it to this
//! decoder. Frames split events anywhere (mid-line, between `\r` and `\n`, inside a UTF-8
//! character) and carry several events at once, so the decoder keeps only what it must across
//! calls: the unfinished line and the `data` of the unfinished event, in buffers that are reused
//! for the life of the stream. After warm-up, decoding an event allocates nothing.
//!
//! It follows the WHATWG event-stream grammar: lines end in CRLF, LF or a lone CR; a line starting
//! with `:` is a comment; `data:` lines are joined with `\n`; one space after the colon is
//! dropped; a blank line ends a block. Every block end is reported, with the offset in the current
//! input just past it, so a caller can tell which input bytes belong to which event (the tap uses
//! this to withhold one event without copying the others).
//!
//! Written by hand rather than taken from `sse-stream`: that crate owns the body and yields owned
//! events, while the proxy must keep the bytes flowing to the client and only look at them.

use bytes::BytesMut;

/// What a finished block (the lines up to a blank line) contained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockKind<'a> {
    /// At least one `data:` line. `name` is the `event:` field when one was given.
    Data {
        /// The `event:` field, if any (`None` means the default `message` type).
        name: Option<&'a [u8]>,
        /// The `data` lines joined with `\n`, without the final newline.
        data: &'a [u8],
    },
    /// Only comment lines (`: keep-alive`, TGI's bare `:`).
    Comment,
    /// Neither data nor comments (stray blank lines, or only `id:`/`retry:` fields).
    Empty,
}

/// One finished block and where it ended in the input passed to [`Decoder::feed`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block<'a> {
    /// What the block held.
    pub kind: BlockKind<'a>,
    /// Offset just past the blank line that closed the block, relative to the current input.
    pub end: usize,
}

/// Incremental SSE decoder; one per stream.
#[derive(Debug, Default)]
pub struct Decoder {
    /// The unfinished line carried over from earlier input.
    line: BytesMut,
    /// `data` lines of the unfinished block, each followed by `\n`.
    data: BytesMut,
    /// `event:` field of the unfinished block.
    name: BytesMut,
    /// The unfinished block has had at least one `data:` line.
    has_data: bool,
    /// The unfinished block has had at least one comment line.
    has_comment: bool,
    /// The unfinished block has had any line at all (a field of any kind).
    has_fields: bool,
    /// The previous input ended in `\r`; a leading `\n` now belongs to that terminator.
    after_cr: bool,
}

impl Decoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// True when bytes of an unfinished line or block are buffered (the stream stopped mid-event).
    pub fn is_mid_event(&self) -> bool {
        !self.line.is_empty() || self.has_fields
    }

    /// Feeds the next bytes of the stream, calling `on_block` for every block they finish.
    pub fn feed(&mut self, input: &[u8], mut on_block: impl FnMut(Block<'_>)) {
        let mut pos = 0;
        if self.after_cr {
            self.after_cr = false;
            if input.first() == Some(&b'\n') {
                pos = 1;
            }
        }
        while pos < input.len() {
            let rest = &input[pos..];
            let Some(idx) = memchr::memchr2(b'\n', b'\r', rest) else {
                self.line.extend_from_slice(rest);
                return;
            };
            let mut next = pos + idx + 1;
            if rest[idx] == b'\r' {
                match input.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if self.line.is_empty() {
                self.take_line(&rest[..idx], next, &mut on_block);
            } else {
                self.line.extend_from_slice(&rest[..idx]);
                let line = std::mem::take(&mut self.line);
                self.take_line(&line, next, &mut on_block);
                self.line = line;
                self.line.clear();
            }
            pos = next;
        }
    }

    /// Handles one complete line (without its terminator) that ended at `end` in the input.
    fn take_line(&mut self, line: &[u8], end: usize, on_block: &mut impl FnMut(Block<'_>)) {
        if line.is_empty() {
            self.dispatch(end, on_block);
            return;
        }
        self.has_fields = true;
        if line[0] == b':' {
            self.has_comment = true;
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(colon) => {
                let value = &line[colon + 1..];
                (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                self.data.extend_from_slice(value);
                self.data.extend_from_slice(b"\n");
                self.has_data = true;
            }
            b"event" => {
                self.name.clear();
                self.name.extend_from_slice(value);
            }
            // `id`, `retry` and unknown fields carry nothing the gateway measures.
            _ => {}
        }
    }

    /// Ends the current block at a blank line and reports it.
    fn dispatch(&mut self, end: usize, on_block: &mut impl FnMut(Block<'_>)) {
        let kind = if self.has_data {
            let data = &self.data[..self.data.len() - 1];
            let name = (!self.name.is_empty()).then_some(&self.name[..]);
            BlockKind::Data { name, data }
        } else if self.has_comment {
            BlockKind::Comment
        } else {
            BlockKind::Empty
        };
        on_block(Block { kind, end });
        self.data.clear();
        self.name.clear();
        self.has_data = false;
        self.has_comment = false;
        self.has_fields = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    enum Owned {
        Data(Option<String>, String),
        Comment,
        Empty,
    }

    fn decode_in_pieces(pieces: &[&[u8]]) -> Vec<(Owned, usize)> {
        let mut decoder = Decoder::new();
        let mut out = Vec::new();
        for piece in pieces {
            decoder.feed(piece, |block| {
                let owned = match block.kind {
                    BlockKind::Data { name, data } => Owned::Data(
                        name.map(|n| String::from_utf8_lossy(n).into_owned()),
                        String::from_utf8_lossy(data).into_owned(),
                    ),
                    BlockKind::Comment => Owned::Comment,
                    BlockKind::Empty => Owned::Empty,
                };
                out.push((owned, block.end));
            });
        }
        out
    }

    fn data(s: &str) -> Owned {
        Owned::Data(None, s.to_string())
    }

    #[test]
    fn splits_events_and_reports_offsets() {
        let out = decode_in_pieces(&[b"data: a\n\ndata: b\n\n"]);
        assert_eq!(out, vec![(data("a"), 9), (data("b"), 18)]);
    }

    #[test]
    fn accepts_crlf_cr_and_lf() {
        let out = decode_in_pieces(&[b"data: a\r\n\r\ndata: b\r\rdata: c\n\n"]);
        let kinds: Vec<_> = out.into_iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, vec![data("a"), data("b"), data("c")]);
    }

    #[test]
    fn crlf_split_between_reads_is_one_terminator() {
        let out = decode_in_pieces(&[b"data: a\r", b"\n\r", b"\ndata: b\n\n"]);
        let kinds: Vec<_> = out.iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, vec![&data("a"), &data("b")]);
        // The blank line closing the first block is the lone `\r` ending the second piece; it is
        // dispatched at once, without waiting to see whether a `\n` follows.
        assert_eq!(out[0].1, 2);
    }

    #[test]
    fn comments_named_events_and_multiline_data() {
        let out = decode_in_pieces(&[
            b": keep-alive\n\nevent: sglext_ids\ndata: {}\n\ndata:x\ndata: y\n\n",
        ]);
        let kinds: Vec<_> = out.into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            kinds,
            vec![
                Owned::Comment,
                Owned::Data(Some("sglext_ids".into()), "{}".into()),
                data("x\ny"),
            ]
        );
    }

    #[test]
    fn stray_blank_lines_are_empty_blocks() {
        let out = decode_in_pieces(&[b"\n\ndata: a\n\n"]);
        let kinds: Vec<_> = out.into_iter().map(|(k, _)| k).collect();
        assert_eq!(kinds, vec![Owned::Empty, Owned::Empty, data("a")]);
    }

    #[test]
    fn mid_event_is_visible() {
        let mut decoder = Decoder::new();
        decoder.feed(b"data: {\"a\"", |_| {});
        assert!(decoder.is_mid_event());
        decoder.feed(b":1}\n", |_| {});
        assert!(decoder.is_mid_event());
        decoder.feed(b"\n", |_| {});
        assert!(!decoder.is_mid_event());
    }

    #[test]
    fn trailing_space_payload_is_kept_for_the_caller_to_trim() {
        // TensorRT-LLM writes `data: {json} \n\n`; the decoder keeps the space.
        let out = decode_in_pieces(&[b"data: {} \n\n"]);
        assert_eq!(out[0].0, data("{} "));
    }

    proptest::proptest! {
        /// However a stream is cut into frames, the same blocks come out, and nothing panics on
        /// arbitrary bytes (CR/LF/colons/`data` are over-represented to hit the grammar).
        #[test]
        fn any_split_decodes_like_the_whole(
            bytes in proptest::collection::vec(
                proptest::prop_oneof![
                    proptest::strategy::Just(b'\n'), proptest::strategy::Just(b'\r'),
                    proptest::strategy::Just(b':'), proptest::strategy::Just(b' '),
                    proptest::strategy::Just(b'd'), proptest::strategy::Just(b'a'),
                    proptest::strategy::Just(b't'), proptest::strategy::Just(b'e'),
                    proptest::prelude::any::<u8>(),
                ],
                0..200,
            ),
            cuts in proptest::collection::vec(0usize..200, 0..8),
        ) {
            let whole: Vec<Owned> = decode_in_pieces(&[&bytes]).into_iter().map(|(k, _)| k).collect();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut pieces: Vec<&[u8]> = Vec::new();
            let mut from = 0;
            for cut in cuts {
                pieces.push(&bytes[from..cut]);
                from = cut;
            }
            pieces.push(&bytes[from..]);
            let split: Vec<Owned> = decode_in_pieces(&pieces).into_iter().map(|(k, _)| k).collect();
            proptest::prop_assert_eq!(whole, split);
        }
    }
}
