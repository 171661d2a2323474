//! The action modules.

use std::path::Path;
use std::time::Duration;

use kiln_instance::fileops::{Encoding, FileOp, FileOpOutput};
use kiln_instance::{ExecRequest, ExitStatus, Stream};
use kiln_yaml::{Map, Node, Span};
use serde_json::{Map as JsonMap, Value};

use crate::action::{Action, Shape};
use crate::document::{Source, Step};
use crate::engine::{expand_text, DocRun, Engine, Failure, Outcome, Resolver};
use crate::events::{Event, StepRef};
use crate::load::parse_permissions;

/// Attempts per WebDownload, separate from the step's `maxAttempts` (as in AWSTOE).
const WEB_DOWNLOAD_ATTEMPTS: u32 = 5;

/// Most objects one S3Download of a key prefix fetches (as in AWSTOE).
const MAX_S3_OBJECTS: usize = 1000;

/// Lines of output quoted in a failure message.
const TAIL_LINES: usize = 8;

/// Reads typed inputs out of an (expanded) mapping, with errors that point into the document.
struct Inputs<'a> {
    map: &'a Map,
    span: Span,
    source: &'a Source,
    action: Action,
}

impl<'a> Inputs<'a> {
    fn err(&self, span: Span, msg: String) -> Failure {
        Failure::fatal(format!("{}:{}: {msg}", self.source.name, span.start))
    }

    fn node(&self, key: &str) -> Option<&'a Node> {
        self.map.get(key).filter(|n| !n.is_null())
    }

    fn string(&self, key: &str) -> Result<Option<String>, Failure> {
        match self.node(key) {
            None => Ok(None),
            Some(n) => match n.as_text() {
                Some(t) => Ok(Some(t.to_string())),
                None => Err(self.err(
                    n.span,
                    format!(
                        "`{key}` of {} must be a string, not {}",
                        self.action,
                        n.type_name()
                    ),
                )),
            },
        }
    }

    fn required(&self, key: &str) -> Result<String, Failure> {
        self.string(key)?
            .ok_or_else(|| self.err(self.span, format!("{} needs `{key}`", self.action)))
    }

    fn boolean(&self, key: &str, default: bool) -> Result<bool, Failure> {
        match self.node(key) {
            None => Ok(default),
            Some(n) => {
                let s = n.as_scalar();
                match (
                    s.and_then(|s| s.as_bool()),
                    s.map(|s| s.text.trim().to_ascii_lowercase()),
                ) {
                    (Some(b), _) => Ok(b),
                    (None, Some(t)) if t == "true" => Ok(true),
                    (None, Some(t)) if t == "false" => Ok(false),
                    _ => Err(self.err(
                        n.span,
                        format!(
                            "`{key}` must be true or false, not `{}`",
                            s.map_or(n.type_name(), |s| s.text.as_str())
                        ),
                    )),
                }
            }
        }
    }

    fn integer(&self, key: &str) -> Result<Option<i64>, Failure> {
        match self.node(key) {
            None => Ok(None),
            Some(n) => n
                .as_scalar()
                .and_then(|s| s.as_int().or_else(|| s.text.trim().parse().ok()))
                .map(Some)
                .ok_or_else(|| self.err(n.span, format!("`{key}` must be an integer"))),
        }
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<String>>, Failure> {
        match self.node(key) {
            None => Ok(None),
            Some(n) => match n.as_seq() {
                Some(items) => items
                    .iter()
                    .map(|i| {
                        i.as_scalar().map(|s| s.text.clone()).ok_or_else(|| {
                            self.err(i.span, format!("items of `{key}` must be strings"))
                        })
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map(Some),
                None => Err(self.err(n.span, format!("`{key}` must be a list of strings"))),
            },
        }
    }

    fn permissions(&self, key: &str) -> Result<Option<u32>, Failure> {
        match self.node(key) {
            None => Ok(None),
            Some(n) => n
                .as_text()
                .and_then(parse_permissions)
                .map(Some)
                .ok_or_else(|| {
                    self.err(
                        n.span,
                        format!("`{key}` must be octal permission digits such as 755 or 0644"),
                    )
                }),
        }
    }

    fn encoding(&self) -> Result<Encoding, Failure> {
        match self.string("encoding")? {
            None => Ok(Encoding::Utf8),
            Some(t) => Encoding::parse(&t).ok_or_else(|| {
                self.err(
                    self.node("encoding").map_or(self.span, |n| n.span),
                    format!(
                        "unknown encoding `{t}`; use one of {}",
                        kiln_instance::fileops::ENCODING_NAMES
                    ),
                )
            }),
        }
    }
}

fn input_list<'a>(
    node: Option<&'a Node>,
    source: &'a Source,
    action: Action,
    step: &Step,
) -> Result<Vec<Inputs<'a>>, Failure> {
    let Some(node) = node else {
        return Err(Failure::fatal(format!(
            "{}:{}: {action} needs `inputs`",
            source.name, step.span.start
        )));
    };
    let items = match (node.as_seq(), node.as_map().and_then(|m| m.get("commands"))) {
        (Some(items), _) => items,
        (None, Some(wrapped)) => wrapped.as_seq().unwrap_or_default(),
        _ => &[],
    };
    items
        .iter()
        .map(|i| {
            i.as_map()
                .map(|map| Inputs {
                    map,
                    span: i.span,
                    source,
                    action,
                })
                .ok_or_else(|| {
                    Failure::fatal(format!(
                        "{}:{}: each input of {action} is a mapping",
                        source.name, i.span.start
                    ))
                })
        })
        .collect()
}

fn single<'a>(
    node: Option<&'a Node>,
    source: &'a Source,
    action: Action,
    span: Span,
) -> Result<Inputs<'a>, Failure> {
    static EMPTY: std::sync::OnceLock<Map> = std::sync::OnceLock::new();
    match node {
        None => Ok(Inputs {
            map: EMPTY.get_or_init(Map::default),
            span,
            source,
            action,
        }),
        Some(n) => n
            .as_map()
            .map(|map| Inputs {
                map,
                span: n.span,
                source,
                action,
            })
            .ok_or_else(|| {
                Failure::fatal(format!(
                    "{}:{}: the inputs of {action} are a mapping",
                    source.name, n.span.start
                ))
            }),
    }
}

fn tail(out: &str, err: &str) -> String {
    let lines: Vec<&str> = err
        .lines()
        .chain(out.lines())
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.is_empty() {
        return String::new();
    }
    // Prefer stderr: it usually says why.
    let errs: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    let pick = if errs.is_empty() { lines } else { errs };
    let start = pick.len().saturating_sub(TAIL_LINES);
    format!("; last output:\n  {}", pick[start..].join("\n  "))
}

fn stdout_output(stdout: &str) -> Vec<JsonMap<String, Value>> {
    let mut m = JsonMap::new();
    m.insert(
        "stdout".into(),
        Value::String(stdout.trim_end_matches(['\n', '\r']).to_string()),
    );
    vec![m]
}

fn one(key: &str, value: impl Into<Value>) -> JsonMap<String, Value> {
    let mut m = JsonMap::new();
    m.insert(key.into(), value.into());
    m
}

impl Engine {
    /// Runs one action with its expanded inputs.
    pub(crate) async fn action(
        &self,
        run: &DocRun<'_>,
        step: &Step,
        sref: StepRef<'_>,
        inputs: Option<&Node>,
        resolver: &Resolver,
    ) -> Result<Outcome, Failure> {
        let source = run.doc.source.as_ref();
        let action = step.action;
        match action {
            Action::ExecuteBash => {
                let i = single(inputs, source, action, step.span)?;
                let commands = i
                    .strings("commands")?
                    .ok_or_else(|| i.err(i.span, "ExecuteBash needs `commands`".into()))?;
                let mut script = commands.join("\n");
                script.push('\n');
                self.run_script(run, sref, &script).await
            }
            Action::ExecuteBinary => {
                let i = single(inputs, source, action, step.span)?;
                let path = i.required("path")?;
                let args = i.strings("arguments")?.unwrap_or_default();
                let req = ExecRequest {
                    program: path,
                    args,
                    env: self.env.clone(),
                    ..ExecRequest::default()
                };
                self.exec_outcome(sref, &req).await
            }
            Action::ExecuteDocument => {
                let i = single(inputs, source, action, step.span)?;
                let document = i.required("document")?;
                let owner = i.string("document-s3-bucket-owner")?;
                let phases = i
                    .string("phases")?
                    .filter(|p| !p.trim().is_empty())
                    .map(|p| {
                        p.split(',')
                            .map(|s| s.trim().to_string())
                            .filter(|s| !s.is_empty())
                            .collect()
                    });
                let mut parameters = Vec::new();
                if let Some(list) = i.node("parameters").and_then(Node::as_seq) {
                    for item in list {
                        let m = item.as_map();
                        let name = m.and_then(|m| m.get("name")).and_then(Node::as_text);
                        let value = m
                            .and_then(|m| m.get("value"))
                            .and_then(|v| v.as_scalar())
                            .map(|s| s.text.clone());
                        match (name, value) {
                            (Some(n), Some(v)) => parameters.push((n.to_string(), v)),
                            _ => {
                                return Err(i.err(
                                    item.span,
                                    "each parameter needs `name` and `value`".into(),
                                ))
                            }
                        }
                    }
                }
                let nested = self
                    .run_nested(run, &document, owner.as_deref(), phases, parameters)
                    .await?;
                Ok(Outcome::Done {
                    outputs: vec![nested.summary()],
                    nested: Some(nested),
                })
            }
            Action::Assert => {
                let _ = inputs;
                let cond = step
                    .assertion
                    .as_ref()
                    .ok_or_else(|| Failure::fatal("Assert needs a condition in `inputs`"))?;
                if self.eval(cond, resolver, run).await? {
                    Ok(Outcome::nothing())
                } else {
                    Err(Failure::fatal(format!(
                        "assertion is false: {}",
                        describe(cond, resolver, source)
                    )))
                }
            }
            Action::Reboot => {
                let i = single(inputs, source, action, step.span)?;
                let delay = i.integer("delaySeconds")?.unwrap_or(0);
                if !self.instance.can_reboot() {
                    return Err(Failure::fatal(format!(
                        "the {} instance cannot reboot; run this document in a VM (builder: vm) to use Reboot",
                        self.instance.kind()
                    )));
                }
                if delay > 0 {
                    self.observer.event(&Event::Note {
                        step: sref,
                        message: &format!("rebooting in {delay} s"),
                    });
                    tokio::time::sleep(Duration::from_secs(delay as u64)).await;
                }
                self.observer.event(&Event::Note {
                    step: sref,
                    message: "rebooting the instance",
                });
                self.instance
                    .reboot()
                    .await
                    .map_err(|e| Failure::fatal(format!("reboot failed: {e}")))?;
                Ok(Outcome::nothing())
            }
            Action::UpdateOS => {
                let i = single(inputs, source, action, step.span)?;
                let include = i.strings("include")?.unwrap_or_default();
                let exclude = i.strings("exclude")?.unwrap_or_default();
                let script = update_os_script(&include, &exclude);
                match self.run_script(run, sref, &script).await? {
                    Outcome::Done { .. } => Ok(Outcome::nothing()),
                    other => Ok(other),
                }
            }
            Action::WebDownload => {
                self.web_download(input_list(inputs, source, action, step)?, sref)
                    .await
            }
            Action::S3Download => {
                self.s3_download(input_list(inputs, source, action, step)?)
                    .await
            }
            Action::S3Upload => {
                self.s3_upload(input_list(inputs, source, action, step)?)
                    .await
            }
            a if a.windows_only() => Err(Failure::fatal(format!(
                "{a} is Windows-only and cannot run on Linux"
            ))),
            _ => {
                debug_assert_eq!(action.schema().shape, Shape::List);
                let mut outputs = Vec::new();
                for i in input_list(inputs, source, action, step)? {
                    let op = file_op(&i)?;
                    let result = self.instance.file_op(&op).await.map_err(|e| {
                        Failure::retryable(format!("{}:{}: {e}", source.name, i.span.start))
                    })?;
                    match (action, result) {
                        (Action::ReadFile, FileOpOutput::Text(content)) => {
                            if i.boolean("printFileContent", false)? {
                                for line in content.lines() {
                                    self.observer.event(&Event::Output {
                                        step: sref,
                                        stream: Stream::Stdout,
                                        line,
                                    });
                                }
                            }
                            outputs.push(one("content", content));
                        }
                        (Action::ListFiles, FileOpOutput::Paths(paths)) => {
                            outputs.push(one("files", paths.join(",")));
                        }
                        _ => {}
                    }
                }
                Ok(Outcome::outputs(outputs))
            }
        }
    }

    /// Writes a bash script into the instance's scratch folder and runs it.
    async fn run_script(
        &self,
        run: &DocRun<'_>,
        sref: StepRef<'_>,
        script: &str,
    ) -> Result<Outcome, Failure> {
        let path = format!("{}/{}.sh", run.scratch, uuid::Uuid::new_v4());
        self.instance
            .file_op(&FileOp::Write {
                path: path.clone(),
                content: script.as_bytes().to_vec(),
                mode: 0o700,
            })
            .await?;
        let req = ExecRequest {
            program: "bash".into(),
            args: vec![path.clone()],
            env: self.env.clone(),
            ..ExecRequest::default()
        };
        let outcome = self.exec_outcome(sref, &req).await;
        let _ = self.instance.file_op(&FileOp::DeleteFile { path }).await;
        outcome
    }

    async fn exec_outcome(&self, sref: StepRef<'_>, req: &ExecRequest) -> Result<Outcome, Failure> {
        let observer = self.observer.clone();
        let mut sink = move |stream: Stream, line: &str| {
            observer.event(&Event::Output {
                step: sref,
                stream,
                line,
            });
        };
        let out = self.instance.exec(req, &mut sink).await?;
        match out.status {
            ExitStatus::Code(0) => Ok(Outcome::outputs(stdout_output(&out.stdout))),
            ExitStatus::Code(194) => Ok(Outcome::Reboot),
            status => Err(Failure::retryable(format!(
                "`{}` ended with {status}{}",
                req.program,
                tail(&out.stdout, &out.stderr)
            ))),
        }
    }

    async fn web_download(
        &self,
        items: Vec<Inputs<'_>>,
        sref: StepRef<'_>,
    ) -> Result<Outcome, Failure> {
        let mut destinations = Vec::new();
        for i in items {
            let url = i.required("source")?;
            let destination = i.required("destination")?;
            let overwrite = i.boolean("overwrite", true)?;
            let insecure = i.boolean("ignoreCertificateErrors", false)?;
            let checksum = i.string("checksum")?;
            let algorithm = match i.string("algorithm")? {
                None => None,
                Some(a) => Some(match a.to_ascii_uppercase().as_str() {
                    "MD5" => kiln_instance::fileops::HashAlgorithm::Md5,
                    "SHA1" => kiln_instance::fileops::HashAlgorithm::Sha1,
                    "SHA256" => kiln_instance::fileops::HashAlgorithm::Sha256,
                    "SHA512" => kiln_instance::fileops::HashAlgorithm::Sha512,
                    _ => {
                        return Err(i.err(
                            i.span,
                            format!("unknown algorithm `{a}`; use MD5, SHA1, SHA256 or SHA512"),
                        ))
                    }
                }),
            };
            let verify = match (&checksum, algorithm) {
                (Some(c), Some(a)) => Some((c.trim().to_ascii_lowercase(), a)),
                _ => None,
            };
            let dest = if destination.ends_with('/') {
                let name = url
                    .split(['?', '#'])
                    .next()
                    .and_then(|u| u.trim_end_matches('/').rsplit('/').next())
                    .filter(|n| !n.is_empty() && !n.contains(':'))
                    .unwrap_or("download");
                format!("{destination}{name}")
            } else {
                destination.clone()
            };
            let existing = self
                .instance
                .file_op(&FileOp::Stat { path: dest.clone() })
                .await?;
            if existing != FileOpOutput::Kind(kiln_instance::fileops::PathKind::Missing) {
                if !overwrite {
                    return Err(Failure::fatal(format!(
                        "WebDownload: {dest} exists and `overwrite` is false"
                    )));
                }
                if let Some((sum, algo)) = &verify {
                    if let Ok(FileOpOutput::Text(have)) = self
                        .instance
                        .file_op(&FileOp::Hash {
                            path: dest.clone(),
                            algorithm: *algo,
                        })
                        .await
                    {
                        if &have == sum {
                            self.observer.event(&Event::Note {
                                step: sref,
                                message: &format!(
                                    "{dest} already has the expected checksum; not downloading"
                                ),
                            });
                            destinations.push(dest);
                            continue;
                        }
                    }
                }
            }
            let tmp = tempfile::NamedTempFile::new()
                .map_err(|e| Failure::retryable(format!("temporary file: {e}")))?;
            let client = reqwest::Client::builder()
                .danger_accept_invalid_certs(insecure)
                .build()
                .map_err(|e| Failure::fatal(format!("HTTP client: {e}")))?;
            let mut last_err = String::new();
            let mut ok = false;
            for attempt in 1..=WEB_DOWNLOAD_ATTEMPTS {
                match download(&client, &url, tmp.path()).await {
                    Ok(()) => {
                        ok = true;
                        break;
                    }
                    Err(e) => {
                        last_err = e;
                        if attempt < WEB_DOWNLOAD_ATTEMPTS {
                            self.observer.event(&Event::Note {
                                step: sref,
                                message: &format!(
                                    "download of {url} failed ({last_err}); retrying"
                                ),
                            });
                            tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                        }
                    }
                }
            }
            if !ok {
                return Err(Failure::retryable(format!("WebDownload of {url} failed after {WEB_DOWNLOAD_ATTEMPTS} attempts: {last_err}")));
            }
            if let Some((sum, algo)) = &verify {
                let bytes =
                    std::fs::read(tmp.path()).map_err(|e| Failure::retryable(e.to_string()))?;
                let have = kiln_instance::fileops::hash_hex(*algo, &bytes);
                if &have != sum {
                    return Err(Failure::retryable(format!(
                        "WebDownload of {url}: checksum mismatch (expected {sum}, got {have})"
                    )));
                }
            }
            self.instance.put_file(tmp.path(), &dest, 0o644).await?;
            destinations.push(dest);
        }
        Ok(Outcome::outputs(vec![one(
            "destination",
            destinations.join("\n"),
        )]))
    }

    fn s3(&self) -> Result<&kiln_s3::S3Client, Failure> {
        self.s3.as_deref().ok_or_else(|| {
            Failure::fatal("no S3 endpoint is configured: set AWS_ENDPOINT_URL (and AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), or s3 in kiln's configuration")
        })
    }

    async fn s3_download(&self, items: Vec<Inputs<'_>>) -> Result<Outcome, Failure> {
        let s3 = self.s3()?;
        for i in items {
            let source = i.required("source")?;
            let destination = i.required("destination")?;
            let owner = i.string("expectedBucketOwner")?;
            let overwrite = i.boolean("overwrite", true)?;
            let (bucket, key) =
                kiln_s3::parse_url(&source).map_err(|e| i.err(i.span, e.to_string()))?;
            let mut jobs: Vec<(String, String)> = Vec::new();
            if let Some(prefix) = key.strip_suffix('*') {
                if !prefix.is_empty() && !prefix.ends_with('/') {
                    return Err(i.err(i.span, format!("`{source}`: a key prefix must end with /*")));
                }
                let objects = s3
                    .list_objects(&bucket, prefix, owner.as_deref())
                    .await
                    .map_err(|e| Failure::retryable(e.to_string()))?;
                if objects.len() > MAX_S3_OBJECTS {
                    return Err(Failure::fatal(format!(
                        "`{source}` matches {} objects; S3Download fetches at most {MAX_S3_OBJECTS}",
                        objects.len()
                    )));
                }
                let base = destination.trim_end_matches('/');
                for o in objects.into_iter().filter(|o| !o.key.ends_with('/')) {
                    let rel = o.key[prefix.len()..].to_string();
                    jobs.push((o.key, format!("{base}/{rel}")));
                }
            } else {
                let dest = if destination.ends_with('/') {
                    format!("{destination}{}", key.rsplit('/').next().unwrap_or(&key))
                } else {
                    destination.clone()
                };
                jobs.push((key, dest));
            }
            for (key, dest) in jobs {
                let exists = self
                    .instance
                    .file_op(&FileOp::Stat { path: dest.clone() })
                    .await?
                    != FileOpOutput::Kind(kiln_instance::fileops::PathKind::Missing);
                if exists && !overwrite {
                    return Err(Failure::fatal(format!(
                        "S3Download: {dest} already exists and `overwrite` is false; cannot download"
                    )));
                }
                let tmp = tempfile::NamedTempFile::new()
                    .map_err(|e| Failure::retryable(e.to_string()))?;
                s3.get_object_to_file(&bucket, &key, tmp.path(), owner.as_deref())
                    .await
                    .map_err(|e| Failure::retryable(e.to_string()))?;
                self.instance.put_file(tmp.path(), &dest, 0o644).await?;
            }
        }
        Ok(Outcome::nothing())
    }

    async fn s3_upload(&self, items: Vec<Inputs<'_>>) -> Result<Outcome, Failure> {
        let s3 = self.s3()?;
        for i in items {
            let source = i.required("source")?;
            let destination = i.required("destination")?;
            let owner = i.string("expectedBucketOwner")?;
            let recurse = i.boolean("recurse", false)?;
            let (bucket, key) =
                kiln_s3::parse_url(&destination).map_err(|e| i.err(i.span, e.to_string()))?;
            let mut jobs: Vec<(String, String)> = Vec::new();
            if let Some(dir) = source.strip_suffix('*') {
                let dir = dir.trim_end_matches('/');
                let listed = self
                    .instance
                    .file_op(&FileOp::ListFiles {
                        path: dir.to_string(),
                        pattern: None,
                        recursive: recurse,
                        relative: true,
                    })
                    .await
                    .map_err(|e| Failure::retryable(e.to_string()))?;
                let FileOpOutput::Paths(paths) = listed else {
                    return Err(Failure::retryable("listing returned no paths"));
                };
                for rel in paths {
                    jobs.push((format!("{dir}/{rel}"), kiln_s3::key_under(&key, &rel)));
                }
            } else {
                let object = if key.is_empty() || key.ends_with('/') {
                    format!("{key}{}", source.rsplit('/').next().unwrap_or(&source))
                } else {
                    key.clone()
                };
                jobs.push((source.clone(), object));
            }
            for (path, object) in jobs {
                let tmp = tempfile::NamedTempFile::new()
                    .map_err(|e| Failure::retryable(e.to_string()))?;
                self.instance.get_file(&path, tmp.path()).await?;
                s3.put_object_from_file(&bucket, &object, tmp.path(), owner.as_deref())
                    .await
                    .map_err(|e| Failure::retryable(e.to_string()))?;
            }
        }
        Ok(Outcome::nothing())
    }
}

async fn download(client: &reqwest::Client, url: &str, dest: &Path) -> Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    if resp.status() != reqwest::StatusCode::OK {
        return Err(format!("HTTP {}", resp.status()));
    }
    let mut file = tokio::fs::File::create(dest)
        .await
        .map_err(|e| e.to_string())?;
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        file.write_all(&chunk).await.map_err(|e| e.to_string())?;
    }
    file.flush().await.map_err(|e| e.to_string())
}

/// The file operation of one input item of a file action.
fn file_op(i: &Inputs<'_>) -> Result<FileOp, Failure> {
    Ok(match i.action {
        Action::AppendFile => FileOp::Append {
            path: i.required("path")?,
            content: i.string("content")?.unwrap_or_default(),
            encoding: i.encoding()?,
        },
        Action::CopyFile | Action::MoveFile => FileOp::CopyFile {
            source: i.required("source")?,
            destination: i.required("destination")?,
            overwrite: i.boolean("overwrite", true)?,
            remove_source: i.action == Action::MoveFile,
        },
        Action::CopyFolder | Action::MoveFolder => FileOp::CopyFolder {
            source: i.required("source")?,
            destination: i.required("destination")?,
            overwrite: i.boolean("overwrite", true)?,
            remove_source: i.action == Action::MoveFolder,
        },
        Action::CreateFile => FileOp::CreateFile {
            path: i.required("path")?,
            content: i.string("content")?,
            encoding: i.encoding()?,
            owner: i.string("owner")?,
            group: i.string("group")?,
            permissions: i.permissions("permissions")?,
            overwrite: i.boolean("overwrite", true)?,
        },
        Action::CreateFolder => FileOp::CreateFolder {
            path: i.required("path")?,
            owner: i.string("owner")?,
            group: i.string("group")?,
            permissions: i.permissions("permissions")?,
            overwrite: i.boolean("overwrite", true)?,
        },
        Action::CreateSymlink => FileOp::CreateSymlink {
            path: i.required("path")?,
            target: i.required("target")?,
            force: i.boolean("force", false)?,
        },
        Action::DeleteFile => FileOp::DeleteFile {
            path: i.required("path")?,
        },
        Action::DeleteFolder => FileOp::DeleteFolder {
            path: i.required("path")?,
            force: i.boolean("force", false)?,
        },
        Action::ListFiles => FileOp::ListFiles {
            path: i.required("path")?,
            pattern: i.string("fileNamePattern")?,
            recursive: i.boolean("recursive", false)?,
            relative: false,
        },
        Action::ReadFile => FileOp::ReadFile {
            path: i.required("path")?,
            encoding: i.encoding()?,
        },
        Action::SetFileEncoding => FileOp::SetFileEncoding {
            path: i.required("path")?,
            encoding: i.encoding()?,
        },
        Action::SetFileOwner | Action::SetFolderOwner => FileOp::SetOwner {
            path: i.required("path")?,
            owner: i.required("owner")?,
            group: i.string("group")?,
            recursive: i.boolean("recursive", true)?,
            folder: i.action == Action::SetFolderOwner,
        },
        Action::SetFilePermissions | Action::SetFolderPermissions => FileOp::SetPermissions {
            path: i.required("path")?,
            permissions: i
                .permissions("permissions")?
                .ok_or_else(|| i.err(i.span, format!("{} needs `permissions`", i.action)))?,
            recursive: i.boolean("recursive", true)?,
            folder: i.action == Action::SetFolderPermissions,
        },
        other => return Err(Failure::fatal(format!("{other} is not a file action"))),
    })
}

fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("'{}'", w.replace('\'', "'\\''")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The script UpdateOS runs: apt-get, dnf or yum, whichever the instance has.
pub fn update_os_script(include: &[String], exclude: &[String]) -> String {
    let inc = shell_words(include);
    let exc = shell_words(exclude);
    let exc_csv = exclude.join(",");
    let apt_upgrade = if include.is_empty() {
        "apt-get -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold dist-upgrade".to_string()
    } else {
        format!("apt-get -y -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold install --only-upgrade {inc}")
    };
    let rpm_exclude = if exclude.is_empty() {
        String::new()
    } else {
        format!(" --exclude='{}'", exc_csv.replace('\'', ""))
    };
    format!(
        r#"set -e
if command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update
  held=""
  for p in {exc}; do
    if dpkg -s "$p" >/dev/null 2>&1 && ! apt-mark showhold | grep -qx "$p"; then
      apt-mark hold "$p" >/dev/null
      held="$held $p"
    fi
  done
  trap 'for p in $held; do apt-mark unhold "$p" >/dev/null; done' EXIT
  {apt_upgrade}
elif command -v dnf >/dev/null 2>&1; then
  dnf -y upgrade{rpm_exclude} {inc}
elif command -v yum >/dev/null 2>&1; then
  yum -y update{rpm_exclude} {inc}
else
  echo "UpdateOS: no supported package manager (apt-get, dnf or yum) in this instance" >&2
  exit 1
fi
"#
    )
}

/// A condition with its operands expanded, for the message of a failed Assert.
fn describe(c: &crate::document::Condition, r: &Resolver, source: &Source) -> String {
    use crate::document::Condition;
    let list = |p: &[Condition]| {
        p.iter()
            .map(|c| describe(c, r, source))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match c {
        Condition::And(p) => format!("and({})", list(p)),
        Condition::Or(p) => format!("or({})", list(p)),
        Condition::Not(p) => format!("not({})", describe(p, r, source)),
        Condition::Compare {
            op,
            baseline,
            operand,
            ..
        } => {
            let b = expand_text(baseline, r, source).unwrap_or_default();
            match operand {
                Some(o) => format!(
                    "`{}` {op} `{b}`",
                    expand_text(o, r, source).unwrap_or_default()
                ),
                None => format!("{op} `{b}`"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_os_scripts() {
        let s = update_os_script(&[], &["ec2-hibinit-agent".into()]);
        assert!(s.contains("apt-mark hold"));
        assert!(s.contains("dist-upgrade"));
        assert!(s.contains("--exclude='ec2-hibinit-agent'"));
        let s = update_os_script(&["openssl".into()], &[]);
        assert!(s.contains("install --only-upgrade 'openssl'"));
        assert!(s.contains("dnf -y upgrade 'openssl'"));
        assert!(s.contains("yum -y update 'openssl'"));
    }
}
