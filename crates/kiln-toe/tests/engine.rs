//! The engine against real documents on the host instance.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use kiln_instance::host::HostInstance;
use kiln_toe::report::{RunStatus, StepStatus};
use kiln_toe::Engine;

const HEAD: &str = "name: test\nschemaVersion: 1.0\n";

fn doc(body: &str) -> String {
    format!("{HEAD}{body}")
}

#[tokio::test]
async fn on_failure_abort_stops_everything() {
    let f = Fixture::new();
    let r = f
        .run(&doc(r#"
phases:
  - name: build
    steps:
      - name: Fails
        action: ExecuteBash
        inputs:
          commands: ["echo about to fail; echo why >&2; exit 3"]
      - name: After
        action: ExecuteBash
        inputs:
          commands: ["touch after"]
  - name: validate
    steps:
      - name: Later
        action: ExecuteBash
        inputs:
          commands: ["touch later"]
"#))
        .await;
    assert_eq!(r.status, RunStatus::Failed);
    let s = step(&r, "build", "Fails");
    assert_eq!(s.status, StepStatus::Failed);
    assert!(
        s.failure_message.contains("exit code 3"),
        "{}",
        s.failure_message
    );
    assert!(
        s.failure_message.contains("why"),
        "stderr is quoted: {}",
        s.failure_message
    );
    assert!(!has_step(&r, "build", "After"));
    assert_eq!(
        r.documents[0].phases.len(),
        1,
        "validate must not run after an Abort"
    );
    assert!(!f.path().join("after").exists() && !f.path().join("later").exists());
    assert!(r.failure_message.contains("Fails"));
    assert_eq!(r.failed_step_count, 1);
}

#[tokio::test]
async fn on_failure_continue_runs_on_and_fails() {
    let f = Fixture::new();
    let r = f
        .run(&doc(r#"
phases:
  - name: build
    steps:
      - name: Fails
        action: ExecuteBash
        onFailure: Continue
        inputs:
          commands: ["exit 1"]
      - name: After
        action: ExecuteBash
        inputs:
          commands: ["touch after"]
  - name: validate
    steps:
      - name: Later
        action: ExecuteBash
        inputs:
          commands: ["touch later"]
"#))
        .await;
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!(step(&r, "build", "Fails").status, StepStatus::Failed);
    assert_eq!(step(&r, "build", "After").status, StepStatus::Success);
    assert_eq!(step(&r, "validate", "Later").status, StepStatus::Success);
    assert!(f.path().join("after").exists() && f.path().join("later").exists());
}

#[tokio::test]
async fn on_failure_ignore_succeeds_with_ignored_failure() {
    let f = Fixture::new();
    let r = f
        .run(&doc(r#"
phases:
  - name: build
    steps:
      - name: Fails
        action: ExecuteBash
        onFailure: Ignore
        inputs:
          commands: ["exit 1"]
      - name: After
        action: ExecuteBash
        inputs:
          commands: ["true"]
"#))
        .await;
    assert_eq!(r.status, RunStatus::SuccessWithIgnoredFailure);
    assert!(r.status.ok());
    assert_eq!(
        step(&r, "build", "Fails").status,
        StepStatus::IgnoredFailure
    );
    assert_eq!(r.ignored_failed_step_count, 1);
    assert_eq!(r.failed_step_count, 0);
}

#[tokio::test]
async fn retries_until_max_attempts() {
    let f = Fixture::new();
    let script = "n=$(cat count 2>/dev/null || echo 0); n=$((n+1)); echo $n > count; echo attempt $n; [ $n -ge 3 ]";
    let r = f
        .run(&doc(&format!(
            r#"
phases:
  - name: build
    steps:
      - name: Flaky
        action: ExecuteBash
        maxAttempts: 3
        inputs:
          commands: ["{script}"]
"#
        )))
        .await;
    let s = step(&r, "build", "Flaky");
    assert_eq!(s.status, StepStatus::Success, "{}", s.failure_message);
    assert_eq!(s.attempts, 3);
    assert_eq!(output(s, "stdout"), "attempt 3");
    assert!(f
        .recorder
        .lines()
        .iter()
        .any(|l| l.contains("attempt 1 of 3 failed")));

    let f = Fixture::new();
    let r = f
        .run(&doc(&format!(
            r#"
phases:
  - name: build
    steps:
      - name: Flaky
        action: ExecuteBash
        maxAttempts: 2
        inputs:
          commands: ["{script}"]
"#
        )))
        .await;
    let s = step(&r, "build", "Flaky");
    assert_eq!(s.status, StepStatus::Failed);
    assert_eq!(s.attempts, 2);
}

#[tokio::test]
async fn timeout_fails_the_step_and_kills_its_processes() {
    let f = Fixture::new();
    let started = Instant::now();
    let r = f
        .run(&doc(r#"
phases:
  - name: build
    steps:
      - name: Slow
        action: ExecuteBash
        timeoutSeconds: 1
        inputs:
          commands:
            - sleep 600 &
            - echo $! > bg.pid
            - sleep 600
"#))
        .await;
    assert!(started.elapsed() < Duration::from_secs(20));
    let s = step(&r, "build", "Slow");
    assert_eq!(s.status, StepStatus::Failed);
    assert!(
        s.failure_message.contains("timed out after 1 s"),
        "{}",
        s.failure_message
    );
    let pid: i32 = std::fs::read_to_string(f.path().join("bg.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    assert!(!alive(pid), "background process {pid} survived the timeout");
}

#[tokio::test]
async fn loops_for_foreach_and_delimited() {
    let f = Fixture::new();
    let r = f
        .run_with(
            &f.engine(),
            &doc(r#"
parameters:
  - Hosts:
      type: string
      default: a.example,b.example
constants:
  - Sep:
      type: string
      value: "x;y;z"
phases:
  - name: build
    steps:
      - name: ForLoop
        action: ExecuteBash
        loop:
          for:
            start: 1
            end: 6
            updateBy: 2
        inputs:
          commands: ["echo {{ loop.index }}:{{ loop.value }}"]
      - name: Down
        action: ExecuteBash
        loop:
          name: down
          for: {start: 3, end: 1, updateBy: -1}
        inputs:
          commands: ["echo {{ down.value }}"]
      - name: EachList
        action: ExecuteBash
        loop:
          name: files
          forEach:
            - one
            - "two words"
        inputs:
          commands: ["echo '{{ files.index }}={{ loop.value }}'"]
      - name: EachParam
        action: ExecuteBash
        loop:
          forEach:
            list: '{{ Hosts }}'
            delimiter: ','
        inputs:
          commands: ["echo host {{ loop.value }}"]
      - name: EachConstant
        action: ExecuteBash
        loop:
          forEach:
            list: '{{ Sep }}'
            delimiter: ';'
        inputs:
          commands: ["echo {{ loop.value }}"]
      - name: EachChained
        action: ExecuteBash
        loop:
          forEach:
            list: '{{ build.Down.outputs.stdout }}'
            delimiter: "\n"
        inputs:
          commands: ["echo n{{ loop.value }}"]
"#),
            &[("Hosts", "h1,h2,h3")],
            None,
        )
        .await;
    assert_eq!(r.status, RunStatus::Success, "{}", r.failure_message);
    let s = step(&r, "build", "ForLoop");
    assert_eq!(output(s, "stdout"), "0:1\n1:3\n2:5");
    assert_eq!(s.looping.as_ref().unwrap().iterations, 3);
    assert_eq!(output(step(&r, "build", "Down"), "stdout"), "3\n2\n1");
    assert_eq!(
        output(step(&r, "build", "EachList"), "stdout"),
        "0=one\n1=two words"
    );
    assert_eq!(
        output(step(&r, "build", "EachParam"), "stdout"),
        "host h1\nhost h2\nhost h3"
    );
    assert_eq!(
        output(step(&r, "build", "EachConstant"), "stdout"),
        "x\ny\nz"
    );
    assert_eq!(
        output(step(&r, "build", "EachChained"), "stdout"),
        "n3\nn2\nn1"
    );
}

#[tokio::test]
async fn loop_failure_names_the_iteration_and_stops_the_loop() {
    let f = Fixture::new();
    let r = f
        .run(&doc(r#"
phases:
  - name: build
    steps:
      - name: Each
        action: ExecuteBash
        onFailure: Continue
        loop:
          forEach: [ok1, bad, ok2]
        inputs:
          commands:
            - echo {{ loop.value }} >> seen
            - '[ "{{ loop.value }}" != bad ]'
"#))
        .await;
    let s = step(&r, "build", "Each");
    assert_eq!(s.status, StepStatus::Failed);
    assert!(
        s.failure_message.contains("iteration 1 (bad)"),
        "{}",
        s.failure_message
    );
    let l = s.looping.as_ref().unwrap();
    assert_eq!(
        (l.iterations, l.completed_iterations, l.failed_iteration),
        (3, 1, Some(1))
    );
    assert_eq!(
        std::fs::read_to_string(f.path().join("seen")).unwrap(),
        "ok1\nbad\n"
    );
}

#[tokio::test]
async fn chaining_inputs_and_outputs_across_steps_and_phases() {
    let f = Fixture::new();
    let r = f
        .run(&doc(r#"
phases:
  - name: build
    steps:
      - name: Where
        action: ExecuteBash
        inputs:
          commands: ['echo "$PWD/made/by-chain.txt"']
      - name: Make
        action: CreateFile
        inputs:
          - path: '{{ build.Where.outputs.stdout }}'
            content: chained
      - name: Read
        action: ReadFile
        inputs:
          - path: '{{build.Make.inputs[0].path}}'
  - name: validate
    steps:
      - name: Check
        action: ExecuteBash
        inputs:
          commands:
            - test "{{ build.Read.outputs.content }}" = chained
            - echo "{{ build.Make.inputs[0].content }}"
"#))
        .await;
    assert_eq!(r.status, RunStatus::Success, "{}", r.failure_message);
    let expected = f.path().join("made/by-chain.txt");
    assert_eq!(std::fs::read_to_string(&expected).unwrap(), "chained");
    assert_eq!(output(step(&r, "build", "Read"), "content"), "chained");
    let inputs: serde_json::Value =
        serde_json::from_str(&step(&r, "build", "Make").inputs).unwrap();
    assert_eq!(inputs[0]["path"], expected.display().to_string());
    assert_eq!(output(step(&r, "validate", "Check"), "stdout"), "chained");
}

#[tokio::test]
async fn chaining_to_a_phase_that_did_not_run_fails_clearly() {
    let f = Fixture::new();
    let text = doc(r#"
phases:
  - name: build
    steps:
      - name: Make
        action: ExecuteBash
        inputs:
          commands: ["echo x"]
  - name: test
    steps:
      - name: Use
        action: ExecuteBash
        inputs:
          commands: ["echo {{ build.Make.outputs.stdout }}"]
"#);
    let r = f.run_with(&f.engine(), &text, &[], Some(&["test"])).await;
    let s = step(&r, "test", "Use");
    assert_eq!(s.status, StepStatus::Failed);
    assert!(
        s.failure_message.contains("has not run"),
        "{}",
        s.failure_message
    );
    assert!(
        s.failure_message.contains("doc.yaml:"),
        "points into the document: {}",
        s.failure_message
    );
}

#[tokio::test]
async fn conditionals() {
    let f = Fixture::new();
    std::fs::create_dir(f.path().join("folder")).unwrap();
    std::fs::write(f.path().join("file"), "abc").unwrap();
    let sha = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
    let r = f
        .run_with(
            &f.engine(),
            &doc(&format!(
                r#"
parameters:
  - Version:
      type: string
      default: "2.5"
phases:
  - name: build
    steps:
      - name: HasBash
        action: ExecuteBash
        if:
          binaryExists: bash
        inputs:
          commands: ["echo ran"]
      - name: NoSuchBinary
        action: ExecuteBash
        if:
          binaryExists: no-such-binary-kiln
        inputs:
          commands: ["echo ran"]
      - name: Nested
        action: ExecuteBash
        if:
          and:
            - fileExists: file
            - folderExists: folder
            - not:
                fileExists: folder
            - or:
                - numberLessThan: 3
                  value: '{{{{ Version }}}}'
                - stringEquals: never
                  value: x
        inputs:
          commands: ["echo nested"]
      - name: ThenSkip
        action: ExecuteBash
        if:
          fileExists: file
          then: Skip
          else: Execute
        inputs:
          commands: ["echo no"]
      - name: ElseExecute
        action: ExecuteBash
        if:
          - folderExists: missing
            then: Skip
            else: Execute
        inputs:
          commands: ["echo yes"]
      - name: Hash
        action: ExecuteBash
        if:
          fileSHA256Equals: '{sha}'
          path: file
        inputs:
          commands: ["echo hash"]
      - name: Pattern
        action: ExecuteBash
        if:
          patternMatches: '^[a-z]+$'
          value: 'ThisIsValue'
        inputs:
          commands: ["echo pattern"]
      - name: Aborts
        action: ExecuteBash
        onFailure: Continue
        if:
          stringIsEmpty: ''
          then: Abort
        inputs:
          commands: ["echo never"]
"#
            )),
            &[],
            None,
        )
        .await;
    let status = |n: &str| step(&r, "build", n).status;
    assert_eq!(status("HasBash"), StepStatus::Success);
    assert_eq!(status("NoSuchBinary"), StepStatus::Skipped);
    assert_eq!(status("Nested"), StepStatus::Success);
    assert_eq!(status("ThenSkip"), StepStatus::Skipped);
    assert_eq!(status("ElseExecute"), StepStatus::Success);
    assert_eq!(status("Hash"), StepStatus::Success);
    assert_eq!(status("Pattern"), StepStatus::Success);
    assert_eq!(status("Aborts"), StepStatus::Failed);
    assert!(step(&r, "build", "Aborts")
        .failure_message
        .contains("Abort"));
    // Skipped steps count as success for the document; the aborted one does not.
    assert_eq!(r.status, RunStatus::Failed);
    assert_eq!(r.failed_step_count, 1);
}

#[tokio::test]
async fn assert_action() {
    let f = Fixture::new();
    let r = f
        .run(&doc(r#"
phases:
  - name: validate
    steps:
      - name: Version
        action: ExecuteBash
        inputs:
          commands: ["echo 2.1.1"]
      - name: Holds
        action: Assert
        inputs:
          stringEquals: '2.1.1'
          value: '{{ validate.Version.outputs.stdout }}'
      - name: Fails
        action: Assert
        onFailure: Continue
        inputs:
          and:
            - numberGreaterThan: 2
              value: '3'
            - stringEquals: '9.9.9'
              value: '{{ validate.Version.outputs.stdout }}'
"#))
        .await;
    assert_eq!(step(&r, "validate", "Holds").status, StepStatus::Success);
    let s = step(&r, "validate", "Fails");
    assert_eq!(s.status, StepStatus::Failed);
    assert!(
        s.failure_message.contains("`2.1.1` stringEquals `9.9.9`"),
        "{}",
        s.failure_message
    );
}

#[tokio::test]
async fn parameters_and_constants() {
    let text = doc(r#"
parameters:
  - Greeting:
      type: string
      default: hello
      description: what to say
  - Name:
      type: string
      default: world
constants:
  - Punct:
      type: string
      value: "!"
phases:
  - name: build
    steps:
      - name: Say
        action: ExecuteBash
        inputs:
          commands: ['echo "{{ Greeting }}, {{Name}}{{ Punct }}"']
"#);
    let f = Fixture::new();
    let r = f.run_with(&f.engine(), &text, &[], None).await;
    assert_eq!(output(step(&r, "build", "Say"), "stdout"), "hello, world!");
    let f = Fixture::new();
    let r = f
        .run_with(
            &f.engine(),
            &text,
            &[("Name", "kiln"), ("Punct", "?"), ("Unused", "x")],
            None,
        )
        .await;
    assert_eq!(output(step(&r, "build", "Say"), "stdout"), "hello, kiln!");
    let lines = f.recorder.lines();
    assert!(lines
        .iter()
        .any(|l| l.contains("`Punct` is a constant and cannot be overridden")));
    assert!(lines.iter().any(|l| l.contains("no parameter `Unused`")));
}

#[tokio::test]
async fn missing_parameter_value_fails_before_running() {
    let f = Fixture::new();
    let r = f
        .run(&doc(r#"
parameters:
  - Required:
      type: string
phases:
  - name: build
    steps:
      - name: Touch
        action: ExecuteBash
        inputs:
          commands: ["touch ran"]
"#))
        .await;
    assert_eq!(r.status, RunStatus::Failed);
    assert!(
        r.failure_message.contains("`Required` has no default"),
        "{}",
        r.failure_message
    );
    assert!(r.failure_message.contains("--parameters Required=VALUE"));
    assert!(!f.path().join("ran").exists());
}

#[tokio::test]
async fn windows_only_actions_are_refused_before_the_phase_starts() {
    let f = Fixture::new();
    let r = f
        .run(&doc(r#"
phases:
  - name: build
    steps:
      - name: First
        action: ExecuteBash
        inputs:
          commands: ["touch first-ran"]
      - name: Ps
        action: ExecutePowerShell
        inputs:
          commands: ["Write-Host hi"]
      - name: Msi
        action: InstallMSI
        inputs:
          path: C:\\x.msi
      - name: UnMsi
        action: UninstallMSI
        inputs:
          path: C:\\x.msi
      - name: Reg
        action: SetRegistry
        inputs:
          - path: HKLM:\\SOFTWARE\\X
            name: N
            value: 1
            type: DWORD
"#))
        .await;
    assert_eq!(r.status, RunStatus::Failed);
    let phase = &r.documents[0].phases[0];
    assert!(phase.steps.is_empty());
    assert!(
        phase.failure_message.contains("step `Ps`"),
        "{}",
        phase.failure_message
    );
    for (step, action) in [
        ("Ps", "ExecutePowerShell"),
        ("Msi", "InstallMSI"),
        ("UnMsi", "UninstallMSI"),
        ("Reg", "SetRegistry"),
    ] {
        assert!(
            phase.failure_message.contains(&format!("step `{step}` ("))
                && phase.failure_message.contains(action),
            "{step} / {action} not named in: {}",
            phase.failure_message
        );
    }
    assert!(phase.failure_message.contains("Windows-only"));
    assert!(
        !f.path().join("first-ran").exists(),
        "no step of the phase may run"
    );
}

#[tokio::test]
async fn exit_194_on_the_host_fails_clearly() {
    let f = Fixture::new();
    let r = f
        .run(&doc(r#"
phases:
  - name: build
    steps:
      - name: WantsReboot
        action: ExecuteBash
        inputs:
          commands: ["exit 194"]
      - name: Reboot
        action: Reboot
"#))
        .await;
    let s = step(&r, "build", "WantsReboot");
    assert_eq!(s.status, StepStatus::Failed);
    assert!(s.failure_message.contains("194"), "{}", s.failure_message);
    assert!(
        s.failure_message.contains("cannot reboot"),
        "{}",
        s.failure_message
    );
}

#[tokio::test]
async fn exit_194_reboots_and_reruns_the_step() {
    let f = Fixture::new();
    let instance = Arc::new(Rebootable {
        inner: HostInstance::new(f.path()),
        reboots: Default::default(),
    });
    let engine = Engine::new(instance.clone()).with_observer(f.recorder.clone());
    // The user guide's own example (toe-action-modules-01), with the indicator in the fixture.
    let r = f
        .run_with(
            &engine,
            &doc(r#"
phases:
  - name: build
    steps:
      - name: RestartTrigger
        action: ExecuteBash
        inputs:
          commands:
            - |
              REBOOT_INDICATOR=./reboot-indicator
              if [ -f "${REBOOT_INDICATOR}" ]; then
                echo 'The reboot file exists. Deleting it and exiting with success.'
                rm "${REBOOT_INDICATOR}"
                exit 0
              fi
              echo 'The reboot file does not exist. Creating it and triggering a restart.'
              touch "${REBOOT_INDICATOR}"
              exit 194
      - name: RebootAction
        action: Reboot
        inputs:
          delaySeconds: 0
      - name: After
        action: ExecuteBash
        inputs:
          commands: ["echo after"]
"#),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, RunStatus::Success, "{}", r.failure_message);
    assert_eq!(instance.reboots.load(Ordering::SeqCst), 2);
    let s = step(&r, "build", "RestartTrigger");
    assert_eq!(s.attempts, 1, "a reboot is not a failed attempt");
    assert_eq!(
        output(s, "stdout"),
        "The reboot file exists. Deleting it and exiting with success."
    );
    assert_eq!(output(step(&r, "build", "After"), "stdout"), "after");
}

#[tokio::test]
async fn endless_reboot_requests_are_cut_off() {
    let f = Fixture::new();
    let instance = Arc::new(Rebootable {
        inner: HostInstance::new(f.path()),
        reboots: Default::default(),
    });
    let engine = Engine::new(instance.clone());
    let r = f
        .run_with(
            &engine,
            &doc("phases:\n  - name: build\n    steps:\n      - name: Loop\n        action: ExecuteBash\n        inputs:\n          commands: [\"exit 194\"]\n"),
            &[],
            None,
        )
        .await;
    let s = step(&r, "build", "Loop");
    assert_eq!(s.status, StepStatus::Failed);
    assert!(
        s.failure_message.contains("times in a row"),
        "{}",
        s.failure_message
    );
    assert_eq!(
        instance.reboots.load(Ordering::SeqCst),
        kiln_toe::MAX_REBOOTS_PER_STEP
    );
}

#[tokio::test]
async fn nested_documents() {
    let f = Fixture::new();
    std::fs::create_dir(f.path().join("sub")).unwrap();
    f.write(
        "sub/child.yaml",
        &doc(r#"
parameters:
  - Word:
      type: string
      default: unset
phases:
  - name: build
    steps:
      - name: Child
        action: ExecuteBash
        inputs:
          commands: ["echo child {{ Word }} >> trace"]
  - name: test
    steps:
      - name: ChildTest
        action: ExecuteBash
        inputs:
          commands: ["echo child-test >> trace"]
"#),
    );
    let r = f
        .run(&doc(r#"
phases:
  - name: build
    steps:
      - name: Nested
        action: ExecuteDocument
        inputs:
          document: sub/child.yaml
          phases: build
          parameters:
            - name: Word
              value: passed
      - name: Twice
        action: ExecuteDocument
        loop:
          forEach: [a, b]
        inputs:
          document: sub/child.yaml
          parameters:
            - name: Word
              value: '{{ loop.value }}'
"#))
        .await;
    assert_eq!(r.status, RunStatus::Success, "{}", r.failure_message);
    assert_eq!(
        std::fs::read_to_string(f.path().join("trace")).unwrap(),
        "child passed\nchild a\nchild-test\nchild b\nchild-test\n"
    );
    let s = step(&r, "build", "Nested");
    assert_eq!(
        s.timeout_seconds, -1,
        "ExecuteDocument runs without a time limit"
    );
    assert_eq!(output(s, "status"), "success");
    let nested = s.detailed_output.as_ref().unwrap();
    assert_eq!(nested[0].documents[0].phases[0].steps[0].name, "Child");
}

#[tokio::test]
async fn nesting_is_limited_and_cycles_are_rejected() {
    let f = Fixture::new();
    for i in 1..=4 {
        f.write(
            &format!("level{i}.yaml"),
            &doc(&format!(
                "phases:\n  - name: build\n    steps:\n      - name: Next\n        action: ExecuteDocument\n        inputs:\n          document: level{}.yaml\n",
                i + 1
            )),
        );
    }
    f.write(
        "level5.yaml",
        &doc("phases:\n  - name: build\n    steps:\n      - name: Leaf\n        action: ExecuteBash\n        inputs:\n          commands: [\"touch leaf\"]\n"),
    );
    let r = f
        .run(&doc("phases:\n  - name: build\n    steps:\n      - name: Start\n        action: ExecuteDocument\n        inputs:\n          document: level1.yaml\n"))
        .await;
    assert_eq!(r.status, RunStatus::Failed);
    assert!(
        r.failure_message.contains("nest at most 3 levels"),
        "{}",
        r.failure_message
    );
    assert!(!f.path().join("leaf").exists());

    let f = Fixture::new();
    f.write(
        "a.yaml",
        &doc("phases:\n  - name: build\n    steps:\n      - name: ToB\n        action: ExecuteDocument\n        inputs:\n          document: b.yaml\n"),
    );
    f.write(
        "b.yaml",
        &doc("phases:\n  - name: build\n    steps:\n      - name: ToA\n        action: ExecuteDocument\n        inputs:\n          document: a.yaml\n"),
    );
    let r = f
        .run(&doc("phases:\n  - name: build\n    steps:\n      - name: Start\n        action: ExecuteDocument\n        inputs:\n          document: a.yaml\n"))
        .await;
    assert_eq!(r.status, RunStatus::Failed);
    assert!(
        r.failure_message.contains("already running higher up"),
        "{}",
        r.failure_message
    );
}

#[tokio::test]
async fn an_invalid_nested_document_fails_with_its_errors() {
    let f = Fixture::new();
    f.write("bad.yaml", "schemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n      - name: X\n        action: Nope\n");
    let r = f
        .run(&doc("phases:\n  - name: build\n    steps:\n      - name: Start\n        action: ExecuteDocument\n        inputs:\n          document: bad.yaml\n"))
        .await;
    let s = step(&r, "build", "Start");
    assert_eq!(s.status, StepStatus::Failed);
    assert!(
        s.failure_message.contains("bad.yaml:6:17"),
        "{}",
        s.failure_message
    );
    assert!(s.failure_message.contains("unknown action `Nope`"));
}

#[tokio::test]
async fn execute_binary_env_and_context() {
    let f = Fixture::new();
    let engine = f
        .engine()
        .with_env(vec![("KILN_TEST_VAR".into(), "from-kiln".into())]);
    let r = f
        .run_with(
            &engine,
            &doc(r#"
phases:
  - name: build
    steps:
      - name: Bin
        action: ExecuteBinary
        inputs:
          path: printf
          arguments: ['%s-%s', 'a b', '{{ env:KILN_TEST_VAR }}']
      - name: Ctx
        action: ExecuteBash
        inputs:
          commands:
            - echo "{{ context:phase }}/{{ context:step }}/{{ context:executionId }}/{{ context:osPlatform }}"
            - echo "$KILN_TEST_VAR"
      - name: Os
        action: ExecuteBash
        inputs:
          commands: ['echo "{{ context:osName }}"']
"#),
            &[],
            None,
        )
        .await;
    assert_eq!(r.status, RunStatus::Success, "{}", r.failure_message);
    assert_eq!(output(step(&r, "build", "Bin"), "stdout"), "a b-from-kiln");
    assert_eq!(
        output(step(&r, "build", "Ctx"), "stdout"),
        "build/Ctx/test/linux\nfrom-kiln"
    );
    assert!(!output(step(&r, "build", "Os"), "stdout").is_empty());
}

#[tokio::test]
async fn phases_filter_and_document_order() {
    let f = Fixture::new();
    let text = doc(r#"
phases:
  - name: test
    steps:
      - name: T
        action: ExecuteBash
        inputs:
          commands: ["echo test >> order"]
  - name: build
    steps:
      - name: B
        action: ExecuteBash
        inputs:
          commands: ["echo build >> order"]
  - name: validate
    steps:
      - name: V
        action: ExecuteBash
        inputs:
          commands: ["echo validate >> order"]
"#);
    let r = f
        .run_with(&f.engine(), &text, &[], Some(&["build", "test"]))
        .await;
    assert!(r.status.ok());
    // Document order wins over the order the phases were asked in.
    assert_eq!(
        std::fs::read_to_string(f.path().join("order")).unwrap(),
        "test\nbuild\n"
    );
}

#[tokio::test]
async fn step_output_streams_to_the_observer() {
    let f = Fixture::new();
    f.run(&doc("phases:\n  - name: build\n    steps:\n      - name: Talk\n        action: ExecuteBash\n        inputs:\n          commands: [\"echo one\", \"echo two >&2\"]\n"))
        .await;
    let lines = f.recorder.lines();
    assert!(lines.contains(&"output Talk: one".to_string()));
    assert!(lines.contains(&"output Talk: two".to_string()));
}

#[tokio::test]
async fn update_os_runs_the_package_manager() {
    // Real apt-get on this Debian machine: `hello` is a Debian package that is not installed
    // here, so `--only-upgrade` skips it and the host is not changed beyond apt's lists.
    if !std::path::Path::new("/usr/bin/apt-get").exists() {
        panic!("this test needs apt-get (Debian); run it on the machine kiln targets");
    }
    let f = Fixture::new();
    let r = f
        .run(&doc(r#"
phases:
  - name: build
    steps:
      - name: Update
        action: UpdateOS
        timeoutSeconds: 600
        inputs:
          include:
            - hello
          exclude:
            - also-not-installed
"#))
        .await;
    let s = step(&r, "build", "Update");
    assert_eq!(s.status, StepStatus::Success, "{}", s.failure_message);
    let lines = f.recorder.lines().join("\n");
    assert!(lines.contains("Reading package lists"), "{lines}");
}
