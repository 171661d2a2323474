//! libFuzzer target: decoding an Image Builder API request never panics and a refusal is
//! always a 4xx, whatever the operation, query string, path argument and body.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else {
        return;
    };
    let op = kiln_api::ops::Op::ALL[usize::from(which) % kiln_api::ops::Op::ALL.len()];
    // The first two lines are the query string and the path argument; the rest is the body.
    let mut parts = rest.splitn(3, |&b| b == b'\n');
    let query = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let arg = parts.next().map(|a| String::from_utf8_lossy(a).into_owned());
    let body = parts.next().unwrap_or_default();
    if let Err(e) = kiln_api::decode(op, &query, arg.as_deref(), body) {
        assert!((400..500).contains(&e.status), "{e}");
    }
});
