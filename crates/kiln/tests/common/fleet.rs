//! A fleet over one PostgreSQL database, as real processes: `kiln serve` replicas and `kiln
//! worker run` processes with data directories of their own, and the AWS CLI that drives them
//! (tests/fleet.rs, benches/workers.rs).

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use kiln_testkit::postgres::Cluster;
use serde_json::{json, Value};

use crate::common::text;

/// The AWS CLI of the test venv (`scripts/setup --test`).
pub fn aws_cli() -> Option<PathBuf> {
    let tools = std::env::var("KILN_TEST_TOOLS").unwrap_or_else(|_| "/opt/kiln-test".into());
    let aws = PathBuf::from(tools).join("venv/bin/aws");
    if aws.exists() {
        return Some(aws);
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "no AWS CLI at {}: run scripts/setup --test",
        aws.display()
    );
    eprintln!(
        "skipped: no AWS CLI at {} (scripts/setup --test)",
        aws.display()
    );
    None
}

/// A process of the fleet, killed when the test ends however it ends.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success(), "kill -{sig} {}", self.name);
    }

    /// Its exit code once it exited (`Some(None)` for a signal), `None` while it runs.
    pub fn try_wait(&mut self) -> Option<Option<i32>> {
        self.child.try_wait().unwrap().map(|s| s.code())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.child.id().to_string()])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub struct Fleet {
    /// Where every process's data directory and log are.
    pub dir: PathBuf,
    /// The configuration every process reads.
    pub config: PathBuf,
}

impl Fleet {
    /// A fleet in `dir` over the database at `store`, distributing to region `fleet` (the
    /// registry at `registry`, namespace `fleet`); components of every account run in
    /// sandboxes.
    pub fn new(dir: &Path, store: &str, registry: &str) -> Fleet {
        let config = crate::common::write(
            dir,
            "config.yaml",
            &format!(
                "store: {store}\ntrust:\n  untrustedComponents: sandbox\nregions:\n  fleet: {{registry: \"{registry}\", namespace: fleet}}\n"
            ),
        );
        Fleet {
            dir: dir.to_path_buf(),
            config,
        }
    }

    /// Makes an account in `home`'s data directory and copies the accounts to each of
    /// `others` (as an operator does for server replicas); returns its key.
    pub fn account(&self, home: &str, others: &[&str]) -> Value {
        let key: Value =
            serde_json::from_str(&self.ok(home, &["account", "create", "team", "-o", "json"]))
                .unwrap();
        for o in others {
            std::fs::create_dir_all(self.home(o)).unwrap();
            std::fs::copy(
                self.home(home).join("accounts.json"),
                self.home(o).join("accounts.json"),
            )
            .unwrap();
        }
        key
    }

    /// `kiln serve` on a free loopback port with `concurrency` workers of its own; its URL.
    pub fn serve(&self, home: &str, concurrency: u32) -> (Proc, String) {
        let c = concurrency.to_string();
        let args = ["serve", "--listen", "127.0.0.1:0", "--concurrency", &c];
        let (p, line) = self.spawn(home, &args, &[]);
        let url = line.trim_start_matches("listening on ").to_owned();
        assert!(url.starts_with("http://"), "{line}: {}", p.log());
        (p, url)
    }

    /// Makes worker `name`'s token.
    pub fn token(&self, name: &str) -> String {
        let made: Value = serde_json::from_str(
            &self.ok("tokens", &["worker", "token", "create", name, "-o", "json"]),
        )
        .unwrap();
        made["token"].as_str().unwrap().to_owned()
    }

    /// `kiln worker run` as worker `name`, in a data directory of its own, once it is ready.
    pub fn worker(&self, name: &str, token: &str, concurrency: u32) -> Proc {
        let c = concurrency.to_string();
        let args = ["worker", "run", "--concurrency", &c];
        let (p, line) = self.spawn(name, &args, &[("KILN_WORKER_TOKEN", token)]);
        assert_eq!(line, format!("worker {name} ready"), "{}", p.log());
        p
    }

    pub fn home(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn kiln(&self, home: &str, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .env("KILN_HOME", self.home(home))
            .env("KILN_CONFIG", &self.config)
            .env("KILN_PLAIN", "1")
            .output()
            .expect("kiln runs")
    }

    pub fn ok(&self, home: &str, args: &[&str]) -> String {
        let o = self.kiln(home, args);
        assert!(
            o.status.success(),
            "kiln {args:?}: {}\n{}",
            text(&o.stdout),
            text(&o.stderr)
        );
        text(&o.stdout)
    }

    /// Spawns `kiln ARGS` in `home`, its output (stdout and stderr) to `LABEL.log`.
    pub fn spawn_to(&self, home: &str, label: &str, args: &[&str]) -> Proc {
        let log = self.dir.join(format!("{label}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_kiln"))
            .args(args)
            .env("KILN_HOME", self.home(home))
            .env("KILN_CONFIG", &self.config)
            .env("KILN_PLAIN", "1")
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        Proc {
            name: label.to_owned(),
            child,
            log,
        }
    }

    /// Spawns `kiln ARGS` in `home`, and waits for its first line on stdout.
    pub fn spawn(&self, home: &str, args: &[&str], env: &[(&str, &str)]) -> (Proc, String) {
        let log = self.dir.join(format!("{home}.log"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(args)
            .env("KILN_HOME", self.home(home))
            .env("KILN_CONFIG", &self.config)
            .env("KILN_PLAIN", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        let proc = Proc {
            name: home.to_owned(),
            child,
            log,
        };
        assert!(!first.is_empty(), "{home} said nothing: {}", proc.log());
        (proc, first.trim().to_owned())
    }
}

/// `aws imagebuilder OPERATION --cli-input-json INPUT` against a server, as the account.
pub fn aws(cli: &Path, url: &str, key: &Value, operation: &str, input: Value) -> Value {
    let o = Command::new(cli)
        .args(["imagebuilder", operation, "--endpoint-url", url])
        .args(["--region", "local", "--output", "json", "--cli-input-json"])
        .arg(input.to_string())
        .env("AWS_ACCESS_KEY_ID", key["accessKeyId"].as_str().unwrap())
        .env(
            "AWS_SECRET_ACCESS_KEY",
            key["secretAccessKey"].as_str().unwrap(),
        )
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "aws imagebuilder {operation}: {}",
        text(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).unwrap()
}

/// The running jobs and their workers, from the database.
pub fn running(cluster: &Cluster) -> Vec<(String, String)> {
    cluster
        .psql(
            "kiln",
            "SELECT id || ' ' || worker FROM jobs WHERE state = 'running' ORDER BY id",
        )
        .lines()
        .filter_map(|l| l.trim().split_once(' '))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect()
}

pub fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn image_state(cli: &Path, url: &str, key: &Value, arn: &str) -> String {
    let got = aws(
        cli,
        url,
        key,
        "get-image",
        json!({ "imageBuildVersionArn": arn }),
    );
    got["image"]["state"]["status"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// The ARN a create operation answered with (the answer's only `...Arn` member).
fn arn_of(answer: &Value) -> String {
    answer
        .as_object()
        .and_then(|o| o.iter().find(|(k, _)| k.ends_with("Arn")))
        .and_then(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no ARN in {answer}"))
        .to_owned()
}

/// The API of one server as one account.
pub struct Api<'a> {
    /// The AWS CLI.
    pub cli: &'a Path,
    /// The server.
    pub url: &'a str,
    /// The account's key (`kiln account create -o json`).
    pub key: &'a Value,
}

impl Api<'_> {
    /// `aws imagebuilder OPERATION`.
    pub fn call(&self, operation: &str, input: Value) -> Value {
        aws(self.cli, self.url, self.key, operation, input)
    }

    /// A component whose build runs `commands`.
    pub fn component(&self, name: &str, commands: &[&str]) -> String {
        let commands: Vec<String> = commands.iter().map(|c| format!("'{c}'")).collect();
        let data = format!(
            "name: {name}\nschemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: Run\n        action: ExecuteBash\n        inputs:\n          commands: [{}]\n",
            commands.join(", ")
        );
        arn_of(&self.call(
            "create-component",
            json!({ "name": name, "semanticVersion": "1.0.0", "platform": "Linux", "data": data }),
        ))
    }

    /// An infrastructure configuration.
    pub fn infrastructure(&self, name: &str) -> String {
        arn_of(&self.call(
            "create-infrastructure-configuration",
            json!({ "name": name, "instanceProfileName": "kiln-builder" }),
        ))
    }

    /// A pipeline building container image `name` of `components` on the tiny parent at
    /// `registry`, distributed to region `fleet` as repository `name`.
    pub fn pipeline(&self, name: &str, registry: &str, components: &[&str], infra: &str) -> String {
        let components: Vec<Value> = components
            .iter()
            .map(|c| json!({ "componentArn": c }))
            .collect();
        let recipe = arn_of(&self.call(
            "create-container-recipe",
            json!({
                "containerType": "DOCKER", "name": name, "semanticVersion": "1.0.0",
                "parentImage": format!("docker://{registry}/base/tiny:1.0.0"),
                "components": components,
                "targetRepository": { "service": "ECR", "repositoryName": name },
            }),
        ));
        let dist = arn_of(&self.call(
            "create-distribution-configuration",
            json!({ "name": name, "distributions": [{ "region": "fleet",
                "containerDistributionConfiguration": { "targetRepository":
                    { "service": "ECR", "repositoryName": name } } }] }),
        ));
        arn_of(&self.call(
            "create-image-pipeline",
            json!({ "name": name, "containerRecipeArn": recipe,
                "infrastructureConfigurationArn": infra,
                "distributionConfigurationArn": dist }),
        ))
    }

    /// Starts a pipeline; the image's ARN.
    pub fn start(&self, pipeline: &str) -> String {
        let started = self.call(
            "start-image-pipeline-execution",
            json!({ "imagePipelineArn": pipeline }),
        );
        started["imageBuildVersionArn"].as_str().unwrap().to_owned()
    }

    /// The image's state.
    pub fn state(&self, image: &str) -> String {
        image_state(self.cli, self.url, self.key, image)
    }
}
