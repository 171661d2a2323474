//! What an image's page shows of its record.

use askama::Template;
use kiln_core::record::{ImageRecord, OutputKind, OutputRecord};

use super::super::frame::Frame;
use super::super::json::link;
use super::super::pipelines::seconds;
use super::super::Ctx;

/// Most lines of a failing step's output shown at once.
const FAILURE_LINES: usize = 50;

/// The page.
#[derive(Template)]
#[template(path = "console/image.html")]
pub struct Detail {
    pub frame: Frame,
    pub title: String,
    pub arn: String,
    pub log_url: String,
    pub summary: Summary,
    /// The session's own image (another account's shared image shows no log).
    pub own: bool,
    pub lines: Vec<(u64, String)>,
    pub from: u64,
    pub running: bool,
    pub summary_url: String,
}

/// The page's summary alone, which the page asks for every 2 s until the build ends.
#[derive(Template)]
#[template(path = "console/image_summary.html")]
pub struct SummaryPart {
    pub arn: String,
    pub summary: Summary,
    pub running: bool,
    pub summary_url: String,
}

/// Everything but the log.
pub struct Summary {
    pub state: String,
    pub reason: String,
    pub pipeline: (String, String),
    pub recipe: (String, String),
    pub timeline: Vec<(String, String, String)>,
    pub failure: Option<Failure>,
    pub components: Vec<Component>,
    pub tests: Option<Tests>,
    pub packages: Vec<String>,
    pub diff: Option<Diff>,
    pub outputs: Vec<Output>,
    pub usage: Vec<(String, String)>,
    pub parent: String,
}

/// Why it failed, with the failing step's last lines.
pub struct Failure {
    pub stage: String,
    pub component: String,
    pub step: String,
    pub reason: String,
    pub exit_code: String,
    pub lines: Vec<String>,
}

/// A component as built.
pub struct Component {
    pub name: String,
    pub cache: String,
    pub took: String,
    pub steps: Vec<(String, String, String, String)>,
}

/// Its tests.
pub struct Tests {
    pub status: String,
    pub took: String,
    pub boot: String,
    pub steps: Vec<(String, String, String, String)>,
}

/// Its packages against the previous image's.
pub struct Diff {
    pub against: (String, String),
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

/// One output in one region, with what to type to use it.
pub struct Output {
    pub region: String,
    pub kind: String,
    pub reference: String,
    pub tags: String,
    pub commands: Vec<String>,
}

fn refer(arn: Option<&str>) -> (String, String) {
    let a = arn.unwrap_or("").to_string();
    (link(&a).unwrap_or_default(), a)
}

impl Summary {
    /// What the page shows of `rec`.
    pub async fn of(ctx: &Ctx, rec: &ImageRecord) -> Summary {
        let diff = match kiln_core::inventory::previous_image(&ctx.app.records, rec).await {
            Ok(Some(prev)) if !rec.packages.is_empty() => {
                let d = kiln_core::inventory::diff(&prev.packages, &rec.packages);
                let p = |p: &kiln_core::record::Package| format!("{} {}", p.name, p.version);
                Some(Diff {
                    against: refer(Some(&prev.arn)),
                    added: d.added.iter().map(p).collect(),
                    removed: d.removed.iter().map(p).collect(),
                    changed: d
                        .changed
                        .iter()
                        .map(|(a, b)| format!("{} {} → {}", a.name, a.version, b.version))
                        .collect(),
                })
            }
            _ => None,
        };
        Summary {
            state: rec.state.as_str().to_string(),
            reason: rec
                .history
                .last()
                .and_then(|h| h.reason.clone())
                .unwrap_or_default(),
            pipeline: refer(rec.pipeline.as_deref()),
            recipe: refer(rec.recipe_arn.as_deref()),
            timeline: rec
                .history
                .iter()
                .map(|h| {
                    (
                        h.state.as_str().to_string(),
                        h.at.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string(),
                        h.reason.clone().unwrap_or_default(),
                    )
                })
                .collect(),
            failure: failure(ctx, rec).await,
            components: rec
                .components
                .iter()
                .map(|c| Component {
                    name: c.name.clone(),
                    cache: c.cache.as_str().to_string(),
                    took: seconds(c.duration_ms),
                    steps: steps(&c.steps),
                })
                .collect(),
            tests: rec.tests.as_ref().map(|t| Tests {
                status: t.status.as_str().to_string(),
                took: seconds(t.duration_ms),
                boot: match (t.boot_ms, &t.accelerator) {
                    (Some(ms), Some(a)) => format!("booted in {} ({a:?})", seconds(ms)),
                    (Some(ms), None) => format!("booted in {}", seconds(ms)),
                    _ => String::new(),
                },
                steps: steps(&t.steps),
            }),
            packages: rec
                .packages
                .iter()
                .map(|p| format!("{} {} {}", p.name, p.version, p.architecture))
                .collect(),
            diff,
            outputs: rec.outputs.iter().map(output).collect(),
            usage: usage(rec),
            parent: rec
                .parent
                .as_ref()
                .map(|p| format!("{} ({})", p.reference, p.resolved))
                .unwrap_or_default(),
        }
    }
}

fn steps(s: &[kiln_core::record::StepTiming]) -> Vec<(String, String, String, String)> {
    s.iter()
        .map(|t| {
            (
                t.step.clone(),
                t.action.clone(),
                t.status.word().to_string(),
                seconds(t.duration_ms),
            )
        })
        .collect()
}

fn usage(rec: &ImageRecord) -> Vec<(String, String)> {
    let Some(u) = &rec.usage else {
        return Vec::new();
    };
    let mut out = vec![
        (
            "Builder".to_string(),
            format!(
                "{:.1} s, {:.1} vCPU-s, {:.1} GiB-s",
                u.builder.seconds, u.builder.vcpu_seconds, u.builder.gib_seconds
            ),
        ),
        (
            "Test instance".to_string(),
            format!(
                "{:.1} s, {:.1} vCPU-s, {:.1} GiB-s",
                u.test.seconds, u.test.vcpu_seconds, u.test.gib_seconds
            ),
        ),
    ];
    for r in &u.regions {
        out.push((
            format!("Region {}", r.region),
            format!(
                "{} bytes stored, {} bytes sent",
                r.bytes_stored, r.bytes_sent
            ),
        ));
    }
    out
}

/// What a user types to fetch or boot an output.
fn output(o: &OutputRecord) -> Output {
    let reference = o.reference();
    let plain = reference
        .strip_prefix("docker://")
        .unwrap_or(&reference)
        .to_string();
    let commands = match o.kind {
        OutputKind::OciRegistry => vec![
            format!("podman pull {plain}"),
            format!("podman run --rm -it {plain}"),
        ],
        OutputKind::OciLayout => vec![
            format!("skopeo copy {reference} containers-storage:{}:{}", o.tag.split('-').next().unwrap_or("image"), o.tag),
            format!("podman run --rm -it {reference}"),
        ],
        OutputKind::OciBucket => vec![format!(
            "aws s3 sync {} ./image && skopeo copy oci:./image:{} containers-storage:image:{}",
            o.location, o.tag, o.tag
        )],
        OutputKind::Disk(format) => {
            // qemu calls a VHD disk `vpc`.
            let format = match format.extension() {
                "vhd" => "vpc",
                e => e,
            };
            vec![format!(
                "qemu-system-x86_64 -m 1024 -nographic -snapshot -drive file={},if=virtio,format={format}",
                o.location
            )]
        }
        OutputKind::DiskChunks => vec![
            format!("kiln disk pull {plain} disk.qcow2 --format qcow2"),
            "qemu-system-x86_64 -m 1024 -nographic -snapshot -drive file=disk.qcow2,if=virtio,format=qcow2".into(),
        ],
        OutputKind::ContainerDisk => vec![format!(
            "a KubeVirt VirtualMachine with volumes: [{{name: root, containerDisk: {{image: {plain}}}}}]"
        )],
    };
    Output {
        region: o.region.clone(),
        kind: o.kind.to_string(),
        reference,
        tags: o.tags.join(", "),
        commands,
    }
}

/// The failure, with the failing step's last lines of output from the build log.
async fn failure(ctx: &Ctx, rec: &ImageRecord) -> Option<Failure> {
    let f = rec.failure.as_ref()?;
    let step = f.step.clone().unwrap_or_default();
    let name = step.rsplit('/').next().unwrap_or("").to_string();
    let log = kiln_core::build::log::LogSource::of(ctx.app.records.store(), rec)
        .await
        .lines()
        .await;
    let mut lines = step_output(log.iter().map(|(_, l)| l.as_str()), &name);
    if lines.is_empty() {
        lines = f.output_tail.clone();
    }
    Some(Failure {
        stage: f.stage.as_str().to_string(),
        component: f.component.clone().unwrap_or_default(),
        exit_code: exit_code(&f.reason).unwrap_or_default(),
        step,
        reason: f.reason.clone(),
        lines,
    })
}

/// The last [`FAILURE_LINES`] lines a step wrote, as the build log has them
/// (`TIME   | STEP: TEXT`, `!` for stderr).
fn step_output<'a>(log: impl Iterator<Item = &'a str>, step: &str) -> Vec<String> {
    if step.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<String> = log
        .filter_map(kiln_core::build::log::step_output)
        .filter(|(s, _)| *s == step)
        .map(|(_, t)| t.to_string())
        .collect();
    let skip = out.len().saturating_sub(FAILURE_LINES);
    out.drain(..skip);
    out
}

/// The exit code a failure's reason names (`exit status: 3`, `exit code 3`).
fn exit_code(reason: &str) -> Option<String> {
    for mark in ["exit status: ", "exit code ", "exit status ", "code "] {
        if let Some(i) = reason.find(mark) {
            let digits: String = reason[i + mark.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            if !digits.is_empty() {
                return Some(digits);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_are_read_from_reasons() {
        assert_eq!(
            exit_code("`bash` ended with exit status: 3").as_deref(),
            Some("3")
        );
        assert_eq!(
            exit_code("it exited with code 194 to ask").as_deref(),
            Some("194")
        );
        assert_eq!(exit_code("timed out"), None);
    }

    #[test]
    fn a_steps_last_lines_come_from_the_log() {
        let mut log = String::new();
        for i in 0..80 {
            log.push_str(&format!("10:00:00.000   | Fail: line {i}\n"));
            log.push_str("10:00:00.000   | Other: noise\n");
        }
        log.push_str("10:00:00.000   ! Fail: the error\n");
        let got = step_output(log.lines(), "Fail");
        assert_eq!(got.len(), FAILURE_LINES);
        assert_eq!(got.last().unwrap(), "the error");
        assert_eq!(got[0], "line 31");
    }
}
