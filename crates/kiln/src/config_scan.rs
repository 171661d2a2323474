//! `scanning:` in kiln's configuration: the scanner images are scanned with when their recipe
//! or pipeline asks (`imageScanningConfiguration.imageScanningEnabled`).

use std::time::Duration;

use anyhow::Result;
use kiln_core::scan::{ScanSettings, Severity, ROOT_PLACEHOLDER};
use kiln_yaml::Node;

/// The longest a scan runs unless `timeoutMinutes` says otherwise.
const DEFAULT_TIMEOUT_MINUTES: i64 = 30;

/// `scanning: {command: [PROGRAM, ARG, ...], failOn: SEVERITY, timeoutMinutes: N}`; `{root}` in
/// the command is the image's root folder.
pub fn parse(node: &Node, file: &str, src: &str) -> Result<ScanSettings> {
    let mut r = kiln_yaml::Reader::new();
    let mut settings = ScanSettings {
        command: Vec::new(),
        fail_on: None,
        timeout: Duration::from_secs(DEFAULT_TIMEOUT_MINUTES as u64 * 60),
    };
    if let Some(m) = r.map(node, "`scanning`") {
        r.known_keys(m, &["command", "failOn", "timeoutMinutes"], "`scanning`");
        match m.get("command") {
            None => r.error(
                node.span,
                "`scanning` needs `command`: the scanner and its arguments",
                Some(format!(
                    "for example command: [grype, \"dir:{ROOT_PLACEHOLDER}\", -o, json]"
                )),
            ),
            Some(c) => {
                for item in r.list(c, "`command`").unwrap_or_default() {
                    match item.as_text() {
                        Some(t) if !t.is_empty() => settings.command.push(t.to_string()),
                        _ => r.error(item.span, "items of `command` are strings", None),
                    }
                }
                if settings.command.is_empty() {
                    r.error(
                        c.span,
                        "`command` names the scanner: give at least one item",
                        None,
                    );
                } else if !settings
                    .command
                    .iter()
                    .any(|a| a.contains(ROOT_PLACEHOLDER))
                {
                    r.warn(
                        c.span,
                        format!(
                            "`command` has no `{ROOT_PLACEHOLDER}`: the scanner finds the image's root only in $KILN_SCAN_ROOT"
                        ),
                        None,
                    );
                }
            }
        }
        if let Some(word) = r.string(m, "failOn") {
            match Severity::parse(&word) {
                Some(s) => settings.fail_on = Some(s),
                None => {
                    if let Some(n) = m.get("failOn") {
                        r.error(
                            n.span,
                            format!("unknown severity `{word}` for `failOn`"),
                            Some("use negligible, low, medium, high or critical".into()),
                        );
                    }
                }
            }
        }
        if let Some(mins) = r.integer(m, "timeoutMinutes") {
            match u64::try_from(mins) {
                Ok(n) if (1..=1440).contains(&n) => settings.timeout = Duration::from_secs(n * 60),
                _ => {
                    if let Some(n) = m.get("timeoutMinutes") {
                        r.error(n.span, "`timeoutMinutes` is between 1 and 1440", None);
                    }
                }
            }
        }
    }
    for d in r.diagnostics.iter().filter(|d| !d.is_error()) {
        tracing::warn!("{}", d.render(file, src));
    }
    crate::config::fail_on_errors(&r, file, src)?;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanning(text: &str) -> Result<ScanSettings> {
        let parsed = kiln_yaml::parse(text).map_err(|d| anyhow::anyhow!("{d}"))?;
        let s = parsed
            .root
            .as_map()
            .and_then(|m| m.get("scanning"))
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no scanning"))?;
        parse(&s, "config.yaml", text)
    }

    #[test]
    fn a_scanner_with_its_limits() {
        let s = scanning(
            "scanning:\n  command: [grype, \"dir:{root}\", -o, json]\n  failOn: High\n  timeoutMinutes: 5\n",
        )
        .unwrap();
        assert_eq!(s.command[1], "dir:{root}");
        assert_eq!(s.fail_on, Some(Severity::High));
        assert_eq!(s.timeout, Duration::from_secs(300));
    }

    #[test]
    fn mistakes_point_at_their_place() {
        let e = scanning("scanning:\n  command: [grype]\n  failOn: severe\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("config.yaml:3:11") && e.contains("unknown severity `severe`"),
            "{e}"
        );
        let e = scanning("scanning:\n  failOn: high\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("needs `command`"), "{e}");
        let e = scanning("scanning:\n  command: []\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("at least one item"), "{e}");
    }
}
