//! The image scanning hook: which scanner kiln runs over a tested image's filesystem
//! (`scanning:` in kiln's configuration), whether a pipeline or recipe asks for it
//! (`imageScanningConfiguration`), and what the record keeps of it ([`ScanRecord`]).
//!
//! kiln ships no scanner and no vulnerability database: the operator names a program (grype,
//! trivy, or their own) and kiln reads its JSON. The scanner is the operator's trusted code: it
//! runs on the host, as root, over a read-only view of the image, never inside it.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The placeholder in a scanner's command replaced by the image's root folder.
pub const ROOT_PLACEHOLDER: &str = "{root}";

/// Findings the record quotes (the whole output stays in the build's logs).
pub const QUOTED_FINDINGS: usize = 50;

/// The configured scanner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScanSettings {
    /// The program and its arguments; `{root}` becomes the image's root folder (also in the
    /// environment as `KILN_SCAN_ROOT`).
    pub command: Vec<String>,
    /// Findings at or above this severity fail the tests; none: findings are recorded only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_on: Option<Severity>,
    /// The longest a scan may run.
    #[serde(with = "secs")]
    pub timeout: Duration,
}

impl ScanSettings {
    /// The command line as the record and the log show it.
    pub fn display(&self) -> String {
        self.command.join(" ")
    }

    /// The command with `{root}` replaced.
    pub fn argv(&self, root: &str) -> Vec<String> {
        self.command
            .iter()
            .map(|a| a.replace(ROOT_PLACEHOLDER, root))
            .collect()
    }
}

mod secs {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_secs(u64::deserialize(d)?))
    }
}

/// How bad a finding is, in the words grype and trivy share.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Severity {
    /// The scanner did not say.
    #[default]
    Unknown,
    /// Negligible (grype).
    Negligible,
    /// Low.
    Low,
    /// Medium.
    Medium,
    /// High.
    High,
    /// Critical.
    Critical,
}

impl Severity {
    /// Reads a scanner's or a user's word (any case); `None` for a word no scanner uses.
    pub fn parse(word: &str) -> Option<Severity> {
        Some(match word.to_ascii_lowercase().as_str() {
            "unknown" | "" => Severity::Unknown,
            "negligible" => Severity::Negligible,
            "low" => Severity::Low,
            "medium" | "moderate" => Severity::Medium,
            "high" | "important" => Severity::High,
            "critical" => Severity::Critical,
            _ => return None,
        })
    }

    /// The word kiln shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unknown => "UNKNOWN",
            Severity::Negligible => "NEGLIGIBLE",
            Severity::Low => "LOW",
            Severity::Medium => "MEDIUM",
            Severity::High => "HIGH",
            Severity::Critical => "CRITICAL",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finding: a vulnerability in a package.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Finding {
    /// The vulnerability's id (CVE-..., GHSA-...).
    pub id: String,
    /// How bad it is.
    pub severity: Severity,
    /// The package it is in.
    pub package: String,
    /// The package's installed version.
    pub version: String,
    /// The version that fixes it, when the scanner knows one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_in: Option<String>,
}

/// Whether the image was scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ScanStatus {
    /// The scanner ran and its findings are recorded.
    Completed,
    /// The recipe or pipeline did not ask for a scan.
    NotRequested,
    /// A scan was asked for and nothing scanned it (no scanner configured).
    NotScanned,
    /// The scanner ran and failed, or its output could not be read (the reason says which).
    Failed,
    /// The scanner ran longer than its limit and was stopped.
    TimedOut,
}

impl ScanStatus {
    /// Image Builder's `ImageScanStatus` for it; none when no scan was asked for.
    pub fn api_word(self) -> Option<&'static str> {
        match self {
            ScanStatus::Completed => Some("COMPLETED"),
            ScanStatus::NotRequested => None,
            ScanStatus::NotScanned => Some("ABANDONED"),
            ScanStatus::Failed => Some("FAILED"),
            ScanStatus::TimedOut => Some("TIMED_OUT"),
        }
    }
}

/// What the record keeps of the scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ScanRecord {
    /// Whether it was scanned.
    pub status: ScanStatus,
    /// Why it was not scanned, or why the scan failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The scanner's command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scanner: Option<String>,
    /// The output format kiln read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<OutputFormat>,
    /// When the scan began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<DateTime<Utc>>,
    /// How long it took.
    #[serde(default)]
    pub duration_ms: u64,
    /// Findings per severity.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<Severity, u32>,
    /// The worst findings first, at most [`QUOTED_FINDINGS`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
    /// Every finding's count.
    #[serde(default)]
    pub total: u32,
    /// The scanner's whole output, in the build's logs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<std::path::PathBuf>,
}

impl ScanRecord {
    /// A record of an image nothing scanned.
    pub fn not_scanned(reason: impl Into<String>) -> ScanRecord {
        ScanRecord::ended(ScanStatus::NotScanned, reason)
    }

    /// A record of a scan that ended without findings, and why.
    pub fn ended(status: ScanStatus, reason: impl Into<String>) -> ScanRecord {
        ScanRecord {
            status,
            reason: Some(reason.into()),
            scanner: None,
            format: None,
            started: None,
            duration_ms: 0,
            counts: BTreeMap::new(),
            findings: Vec::new(),
            total: 0,
            output: None,
        }
    }

    /// The findings at or above `level`.
    pub fn at_or_above(&self, level: Severity) -> u32 {
        self.counts
            .iter()
            .filter(|(s, _)| **s >= level)
            .map(|(_, n)| n)
            .sum()
    }

    /// One line for people: `3 findings (1 CRITICAL, 2 LOW)`, or why there are none.
    pub fn summary(&self) -> String {
        match self.status {
            ScanStatus::NotRequested | ScanStatus::NotScanned => format!(
                "not scanned: {}",
                self.reason.as_deref().unwrap_or("no reason recorded")
            ),
            ScanStatus::Failed | ScanStatus::TimedOut => format!(
                "scan failed: {}",
                self.reason.as_deref().unwrap_or("no reason recorded")
            ),
            ScanStatus::Completed if self.total == 0 => "scanned: no findings".to_string(),
            ScanStatus::Completed => {
                let parts: Vec<String> = self
                    .counts
                    .iter()
                    .rev()
                    .map(|(s, n)| format!("{n} {s}"))
                    .collect();
                format!(
                    "scanned: {} finding{} ({})",
                    self.total,
                    if self.total == 1 { "" } else { "s" },
                    parts.join(", ")
                )
            }
        }
    }
}

/// The output formats kiln reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputFormat {
    /// `grype -o json`: `matches[].vulnerability` and `.artifact`.
    Grype,
    /// `trivy fs --format json`: `Results[].Vulnerabilities[]`.
    Trivy,
    /// kiln's own, for scripts: `{"findings": [{"id", "severity", "package", "version"}]}`.
    Kiln,
}

/// Why a scanner's output could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the scanner's output is not {0}")]
pub struct UnreadableOutput(String);

/// Reads a scanner's standard output: grype's, trivy's or kiln's own JSON.
pub fn parse_findings(output: &[u8]) -> Result<(OutputFormat, Vec<Finding>), UnreadableOutput> {
    let v: Value = serde_json::from_slice(output).map_err(|e| {
        UnreadableOutput(format!(
            "JSON ({e}); give the scanner its JSON output option (grype -o json, trivy --format json)"
        ))
    })?;
    let text = |v: &Value, k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let severity = |v: &Value, k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .and_then(Severity::parse)
            .unwrap_or_default()
    };
    if let Some(matches) = v.get("matches").and_then(Value::as_array) {
        let findings = matches
            .iter()
            .map(|m| {
                let vul = m.get("vulnerability").unwrap_or(&Value::Null);
                let art = m.get("artifact").unwrap_or(&Value::Null);
                let fixed = vul
                    .get("fix")
                    .and_then(|f| f.get("versions"))
                    .and_then(Value::as_array)
                    .and_then(|a| a.first())
                    .and_then(Value::as_str)
                    .map(str::to_string);
                Finding {
                    id: text(vul, "id"),
                    severity: severity(vul, "severity"),
                    package: text(art, "name"),
                    version: text(art, "version"),
                    fixed_in: fixed,
                }
            })
            .collect();
        return Ok((OutputFormat::Grype, findings));
    }
    if let Some(results) = v.get("Results").and_then(Value::as_array) {
        let findings = results
            .iter()
            .filter_map(|r| r.get("Vulnerabilities").and_then(Value::as_array))
            .flatten()
            .map(|f| Finding {
                id: text(f, "VulnerabilityID"),
                severity: severity(f, "Severity"),
                package: text(f, "PkgName"),
                version: text(f, "InstalledVersion"),
                fixed_in: f
                    .get("FixedVersion")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            })
            .collect();
        return Ok((OutputFormat::Trivy, findings));
    }
    // trivy writes no `Results` for a clean tree, only its schema version.
    if v.get("SchemaVersion").is_some() && v.get("ArtifactName").is_some() {
        return Ok((OutputFormat::Trivy, Vec::new()));
    }
    if let Some(list) = v.get("findings").and_then(Value::as_array) {
        let findings = list
            .iter()
            .map(|f| Finding {
                id: text(f, "id"),
                severity: severity(f, "severity"),
                package: text(f, "package"),
                version: text(f, "version"),
                fixed_in: f.get("fixedIn").and_then(Value::as_str).map(str::to_string),
            })
            .collect();
        return Ok((OutputFormat::Kiln, findings));
    }
    Err(UnreadableOutput(
        "grype's (`matches`), trivy's (`Results`) or kiln's (`findings`) JSON".into(),
    ))
}

/// A completed scan's record from its findings: counted, the worst quoted first.
pub fn completed(
    settings: &ScanSettings,
    format: OutputFormat,
    mut findings: Vec<Finding>,
    started: DateTime<Utc>,
    duration_ms: u64,
    output: std::path::PathBuf,
) -> ScanRecord {
    let mut counts = BTreeMap::new();
    for f in &findings {
        *counts.entry(f.severity).or_insert(0u32) += 1;
    }
    findings.sort_by(|a, b| b.severity.cmp(&a.severity).then(a.id.cmp(&b.id)));
    let total = findings.len() as u32;
    findings.truncate(QUOTED_FINDINGS);
    ScanRecord {
        status: ScanStatus::Completed,
        reason: None,
        scanner: Some(settings.display()),
        format: Some(format),
        started: Some(started),
        duration_ms,
        counts,
        findings,
        total,
        output: Some(output),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ScanSettings {
        ScanSettings {
            command: vec![
                "grype".into(),
                "dir:{root}".into(),
                "-o".into(),
                "json".into(),
            ],
            fail_on: Some(Severity::High),
            timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn grype_output_is_read() {
        let out = br#"{"matches":[
            {"vulnerability":{"id":"CVE-2024-1","severity":"Low","fix":{"versions":["1.2"]}},
             "artifact":{"name":"zlib","version":"1.1"}},
            {"vulnerability":{"id":"CVE-2024-2","severity":"Critical"},
             "artifact":{"name":"openssl","version":"3.0.1"}}]}"#;
        let (format, findings) = parse_findings(out).unwrap();
        assert_eq!(format, OutputFormat::Grype);
        assert_eq!(findings[0].fixed_in.as_deref(), Some("1.2"));
        let rec = completed(
            &settings(),
            format,
            findings,
            Utc::now(),
            5,
            "/l/scan/output.json".into(),
        );
        assert_eq!(rec.findings[0].id, "CVE-2024-2", "the worst first");
        assert_eq!(rec.at_or_above(Severity::High), 1);
        assert_eq!(rec.summary(), "scanned: 2 findings (1 CRITICAL, 1 LOW)");
    }

    #[test]
    fn trivy_output_is_read() {
        let out = br#"{"SchemaVersion":2,"ArtifactName":"/r","Results":[{"Target":"debian",
            "Vulnerabilities":[{"VulnerabilityID":"CVE-1","PkgName":"bash","InstalledVersion":"5",
            "FixedVersion":"","Severity":"MEDIUM"}]}]}"#;
        let (format, findings) = parse_findings(out).unwrap();
        assert_eq!(format, OutputFormat::Trivy);
        assert_eq!(findings[0].severity, Severity::Medium);
        assert_eq!(findings[0].fixed_in, None);
        let clean = br#"{"SchemaVersion":2,"ArtifactName":"/r"}"#;
        assert!(parse_findings(clean).unwrap().1.is_empty());
    }

    #[test]
    fn other_output_is_refused_with_what_to_do() {
        let e = parse_findings(b"3 vulnerabilities found").unwrap_err();
        assert!(e.to_string().contains("grype -o json"), "{e}");
        let e = parse_findings(b"{\"vulns\": []}").unwrap_err();
        assert!(e.to_string().contains("`findings`"), "{e}");
    }

    #[test]
    fn the_root_is_put_in_place() {
        assert_eq!(
            settings().argv("/run/x/root"),
            ["grype", "dir:/run/x/root", "-o", "json"]
        );
        assert_eq!(
            ScanRecord::not_scanned("no scanner is configured").summary(),
            "not scanned: no scanner is configured"
        );
    }
}
