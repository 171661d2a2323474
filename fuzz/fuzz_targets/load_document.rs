//! libFuzzer target: loading a component document never panics, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = kiln_toe::load::parse(kiln_toe::document::Source {
            name: "fuzz.yaml".into(),
            text: text.to_string(),
            dir: None,
        });
    }
});
