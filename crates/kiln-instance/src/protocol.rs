//! What kiln and its agent in an instance say to each other, whichever backend carries it (a
//! sandbox helper's stdin and stdout, a VM's virtio-serial port): one JSON object per line.
//! Requests carry an id; responses name it. The agent opens the conversation with `Ready`, which
//! says the protocol [`VERSION`] it speaks, so that a kiln and an agent from different releases
//! (a VM image carrying an old agent, a remote worker) refuse each other clearly instead of
//! misreading messages.

use serde::{Deserialize, Serialize};

use crate::fileops::{FileOp, FileOpOutput};
use crate::{ExecRequest, ExitStatus, Stream};

/// The version of this protocol. Bump it whenever a message changes meaning or shape.
pub const VERSION: u32 = 1;

/// A request to the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Request {
    /// Chosen by kiln, unique per sandbox run.
    pub id: u64,
    /// What to do.
    pub body: RequestBody,
}

/// What a request asks.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum RequestBody {
    /// Run a program; answered by `Line`s then `Exit`.
    Exec(ExecRequest),
    /// Stop a running `Exec` (its whole process tree).
    Cancel,
    /// A file operation; answered by `FileOp` or `Error`.
    FileOp(FileOp),
    /// Start writing a file (parents created); followed by `Data` chunks and `End`.
    PutBegin {
        /// Path inside the sandbox.
        path: String,
        /// Mode.
        mode: u32,
    },
    /// A chunk of a file being written (base64).
    Data(String),
    /// The file is complete: it is renamed into place; answered by `Done` or `Error`.
    End,
    /// Read a file; answered by `Data` chunks then `Done`, or `Error`.
    Get {
        /// Path inside the sandbox.
        path: String,
    },
}

/// A response from the agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Response {
    /// The request it answers (0 for messages about the sandbox itself).
    pub id: u64,
    /// What it says.
    pub body: ResponseBody,
}

/// What a response says.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ResponseBody {
    /// The instance is set up and its agent serving; the paths (relative to its root) that
    /// kiln had to create in the writable layer as mount points, so that a capture can leave
    /// them out.
    Ready {
        /// The protocol version the agent speaks (0: an agent from before versions existed).
        #[serde(default)]
        version: u32,
        /// Created mount points.
        created: Vec<String>,
    },
    /// The sandbox could not be set up.
    Fatal(String),
    /// A line of output of an `Exec`.
    Line {
        /// Which stream.
        stream: Stream,
        /// The line.
        text: String,
    },
    /// An `Exec` ended.
    Exit {
        /// How.
        status: ExitStatus,
        /// Its standard output (bounded).
        stdout: String,
        /// Its standard error (bounded).
        stderr: String,
    },
    /// The result of a `FileOp`.
    FileOp(FileOpOutput),
    /// A chunk of a file being read (base64).
    Data(String),
    /// A `Put` or `Get` finished.
    Done,
    /// The request failed.
    Error(String),
}

/// Size of file chunks (before base64).
pub const CHUNK: usize = 256 * 1024;

/// Encodes bytes as standard base64.
pub fn b64encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(T[(n >> 18) as usize & 63] as char);
        out.push(T[(n >> 12) as usize & 63] as char);
        out.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

/// Decodes standard base64; `None` on bad input.
pub fn b64decode(s: &str) -> Option<Vec<u8>> {
    fn val(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let s = s.as_bytes();
    if s.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    for q in s.chunks(4) {
        let pad = q.iter().rev().take_while(|&&c| c == b'=').count();
        let mut n = 0u32;
        for (i, &c) in q.iter().enumerate() {
            let v = if i >= 4 - pad { 0 } else { val(c)? };
            n = (n << 6) | v;
        }
        out.push((n >> 16) as u8);
        if pad < 2 {
            out.push((n >> 8) as u8);
        }
        if pad < 1 {
            out.push(n as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trip() {
        for data in [&b""[..], b"a", b"ab", b"abc", b"abcd", &[0, 255, 128, 7, 9]] {
            assert_eq!(b64decode(&b64encode(data)).unwrap(), data);
        }
        assert_eq!(b64encode(b"hello"), "aGVsbG8=");
        assert_eq!(b64decode("a"), None);
        assert!(b64decode("a$==").is_none());
    }

    #[test]
    fn wire_format() {
        let r = Request {
            id: 3,
            body: RequestBody::Get {
                path: "/etc/os-release".into(),
            },
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"id":3,"body":{"get":{"path":"/etc/os-release"}}}"#);
        let back: Request = serde_json::from_str(&s).unwrap();
        assert!(matches!(back.body, RequestBody::Get { .. }));
    }

    #[test]
    fn ready_says_the_version_and_an_old_agent_reads_as_zero() {
        let r = Response {
            id: 0,
            body: ResponseBody::Ready {
                version: VERSION,
                created: vec!["etc/resolv.conf".into()],
            },
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"id":0,"body":{"ready":{"version":1,"created":["etc/resolv.conf"]}}}"#
        );
        let old: Response =
            serde_json::from_str(r#"{"id":0,"body":{"ready":{"created":[]}}}"#).unwrap();
        assert!(matches!(old.body, ResponseBody::Ready { version: 0, .. }));
    }
}
