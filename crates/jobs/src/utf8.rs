//! Output streams to text: a chunk of output may end inside a multi-byte
//! character, whose rest comes with the next chunk. [`Utf8Stream`] carries
//! such an incomplete tail over instead of garbling it; bytes that can
//! never be UTF-8 become U+FFFD as in `String::from_utf8_lossy`. std finds
//! the valid runs (`utf8_chunks`); only the carry is written here, as no
//! dependency of berth's does this for a stream of byte chunks.

/// One stream's decoder.
#[derive(Debug, Default)]
pub(crate) struct Utf8Stream {
    /// The start of a character whose other bytes have not come yet.
    carry: Vec<u8>,
}

impl Utf8Stream {
    /// The text of `data` after what came before; an incomplete character
    /// at its end waits for the next chunk.
    pub(crate) fn decode(&mut self, data: &[u8]) -> String {
        let mut bytes = std::mem::take(&mut self.carry);
        bytes.extend_from_slice(data);
        let mut text = String::with_capacity(bytes.len());
        let mut chunks = bytes.utf8_chunks().peekable();
        while let Some(chunk) = chunks.next() {
            text.push_str(chunk.valid());
            let invalid = chunk.invalid();
            if invalid.is_empty() {
                continue;
            }
            let incomplete = std::str::from_utf8(invalid).is_err_and(|e| e.error_len().is_none());
            if chunks.peek().is_none() && incomplete {
                self.carry = invalid.to_vec();
            } else {
                text.push(char::REPLACEMENT_CHARACTER);
            }
        }
        text
    }

    /// What is left when the stream ends: an incomplete character, as
    /// U+FFFD, or nothing.
    pub(crate) fn finish(&mut self) -> String {
        if self.carry.is_empty() {
            return String::new();
        }
        self.carry.clear();
        char::REPLACEMENT_CHARACTER.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::Utf8Stream;

    #[test]
    fn a_character_split_across_chunks_is_whole() {
        let text = "€ 日本 🦀 ok";
        let bytes = text.as_bytes();
        // Every split point, including inside each multi-byte character.
        for at in 0..=bytes.len() {
            let mut stream = Utf8Stream::default();
            let mut out = stream.decode(&bytes[..at]);
            out.push_str(&stream.decode(&bytes[at..]));
            out.push_str(&stream.finish());
            assert_eq!(out, text, "split at byte {at}");
        }
    }

    #[test]
    fn one_byte_at_a_time_is_whole() {
        let text = "ünïcödé 🦀";
        let mut stream = Utf8Stream::default();
        let out: String = text
            .as_bytes()
            .iter()
            .map(|b| stream.decode(std::slice::from_ref(b)))
            .collect();
        assert_eq!(out + &stream.finish(), text);
    }

    #[test]
    fn bytes_that_are_never_utf8_become_replacement_characters() {
        let mut stream = Utf8Stream::default();
        assert_eq!(stream.decode(b"a\xffb\xc3"), "a\u{fffd}b");
        // The carried lead byte followed by what cannot continue it.
        assert_eq!(stream.decode(b"(c"), "\u{fffd}(c");
        assert_eq!(stream.decode(b"\xe2\x82"), "");
        assert_eq!(stream.finish(), "\u{fffd}");
        assert_eq!(stream.decode(b"x"), "x");
    }
}
