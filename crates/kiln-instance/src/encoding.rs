//! Text encodings of the AWSTOE file actions (`encoding:` of CreateFile, AppendFile, ReadFile,
//! SetFileEncoding).

use serde::{Deserialize, Serialize};

/// An encoding AWSTOE accepts. `utf16` and `utf32` without a byte order mean little-endian
/// with a byte-order mark, so that readers can tell; the explicit `-le`/`-be` forms have none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Encoding {
    /// UTF-8 (the default).
    #[default]
    Utf8,
    /// UTF-16, little-endian, with a byte-order mark.
    Utf16,
    /// UTF-16 little-endian.
    Utf16Le,
    /// UTF-16 big-endian.
    Utf16Be,
    /// UTF-32, little-endian, with a byte-order mark.
    Utf32,
    /// UTF-32 little-endian.
    Utf32Le,
    /// UTF-32 big-endian.
    Utf32Be,
}

/// The spellings AWSTOE documents, for error messages.
pub const ENCODING_NAMES: &str = "utf8, utf-8, utf16, utf-16, utf16-LE, utf-16-LE, utf16-BE, \
                                  utf-16-BE, utf32, utf-32, utf32-LE, utf-32-LE, utf32-BE, utf-32-BE";

impl Encoding {
    /// Parses a name, case-insensitively, with or without the dash after `utf`.
    pub fn parse(name: &str) -> Option<Encoding> {
        let n = name.trim().to_ascii_lowercase().replace("utf-", "utf");
        Some(match n.as_str() {
            "utf8" => Encoding::Utf8,
            "utf16" => Encoding::Utf16,
            "utf16-le" => Encoding::Utf16Le,
            "utf16-be" => Encoding::Utf16Be,
            "utf32" => Encoding::Utf32,
            "utf32-le" => Encoding::Utf32Le,
            "utf32-be" => Encoding::Utf32Be,
            _ => return None,
        })
    }

    fn bom(self) -> &'static [u8] {
        match self {
            Encoding::Utf16 => &[0xFF, 0xFE],
            Encoding::Utf32 => &[0xFF, 0xFE, 0, 0],
            _ => &[],
        }
    }

    /// Encodes text; `with_bom` is false when appending to a file that already has content.
    pub fn encode(self, text: &str, with_bom: bool) -> Vec<u8> {
        let mut out = Vec::new();
        if with_bom {
            out.extend_from_slice(self.bom());
        }
        match self {
            Encoding::Utf8 => out.extend_from_slice(text.as_bytes()),
            Encoding::Utf16 | Encoding::Utf16Le => text
                .encode_utf16()
                .for_each(|u| out.extend(u.to_le_bytes())),
            Encoding::Utf16Be => text
                .encode_utf16()
                .for_each(|u| out.extend(u.to_be_bytes())),
            Encoding::Utf32 | Encoding::Utf32Le => text
                .chars()
                .for_each(|c| out.extend((c as u32).to_le_bytes())),
            Encoding::Utf32Be => text
                .chars()
                .for_each(|c| out.extend((c as u32).to_be_bytes())),
        }
        out
    }

    /// Decodes bytes, skipping a byte-order mark; invalid sequences become U+FFFD.
    pub fn decode(self, bytes: &[u8]) -> String {
        match self {
            Encoding::Utf8 => {
                let b = bytes.strip_prefix(&[0xEF, 0xBB, 0xBF]).unwrap_or(bytes);
                String::from_utf8_lossy(b).into_owned()
            }
            Encoding::Utf16 | Encoding::Utf16Le | Encoding::Utf16Be => {
                let (b, be) = match bytes {
                    [0xFF, 0xFE, rest @ ..] => (rest, false),
                    [0xFE, 0xFF, rest @ ..] => (rest, true),
                    _ => (bytes, self == Encoding::Utf16Be),
                };
                let units: Vec<u16> = b
                    .chunks_exact(2)
                    .map(|c| {
                        let pair = [c[0], c[1]];
                        if be {
                            u16::from_be_bytes(pair)
                        } else {
                            u16::from_le_bytes(pair)
                        }
                    })
                    .collect();
                String::from_utf16_lossy(&units)
            }
            Encoding::Utf32 | Encoding::Utf32Le | Encoding::Utf32Be => {
                let (b, be) = match bytes {
                    [0xFF, 0xFE, 0, 0, rest @ ..] => (rest, false),
                    [0, 0, 0xFE, 0xFF, rest @ ..] => (rest, true),
                    _ => (bytes, self == Encoding::Utf32Be),
                };
                b.chunks_exact(4)
                    .map(|c| {
                        let quad = [c[0], c[1], c[2], c[3]];
                        let v = if be {
                            u32::from_be_bytes(quad)
                        } else {
                            u32::from_le_bytes(quad)
                        };
                        char::from_u32(v).unwrap_or('\u{FFFD}')
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(Encoding::parse("UTF-16-LE"), Some(Encoding::Utf16Le));
        assert_eq!(Encoding::parse("utf32-BE"), Some(Encoding::Utf32Be));
        assert_eq!(Encoding::parse("utf8"), Some(Encoding::Utf8));
        assert_eq!(Encoding::parse("latin1"), None);
    }

    #[test]
    fn round_trips() {
        for e in [
            Encoding::Utf8,
            Encoding::Utf16,
            Encoding::Utf16Le,
            Encoding::Utf16Be,
            Encoding::Utf32,
            Encoding::Utf32Le,
            Encoding::Utf32Be,
        ] {
            let text = "héllo wörld ✓ 𝄞";
            assert_eq!(e.decode(&e.encode(text, true)), text, "{e:?}");
            assert_eq!(e.decode(&e.encode(text, false)), text, "{e:?}");
        }
        assert_eq!(Encoding::Utf16.encode("A", true), vec![0xFF, 0xFE, 0x41, 0]);
        assert_eq!(Encoding::Utf16Be.encode("A", true), vec![0, 0x41]);
    }
}
