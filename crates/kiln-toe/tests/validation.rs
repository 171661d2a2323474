//! Bad documents: every rule gets an error that points at the place and says what to do.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use kiln_toe::document::Source;
use kiln_toe::load::{parse, Diagnostics};

fn errors(text: &str) -> Diagnostics {
    match parse(Source {
        name: "doc.yaml".into(),
        text: text.into(),
        dir: None,
    }) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(d) => d,
    }
}

fn warnings(text: &str) -> String {
    match parse(Source {
        name: "doc.yaml".into(),
        text: text.into(),
        dir: None,
    }) {
        Ok(l) => l.warnings.to_string(),
        Err(d) => panic!("expected a valid document, got:\n{d}"),
    }
}

/// Asserts that the rendered errors contain `doc.yaml:POS: error: ...MESSAGE`.
fn expect(text: &str, pos: &str, message: &str) {
    let d = errors(text);
    let rendered = d.to_string();
    let found = rendered
        .lines()
        .any(|l| l.starts_with(&format!("doc.yaml:{pos}: error: ")) && l.contains(message));
    assert!(found, "expected `{pos}` … `{message}` in:\n{rendered}");
}

fn with_step(step: &str) -> String {
    format!("schemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n{step}")
}

#[test]
fn unquoted_reference_says_quote_it() {
    let text = with_step(
        "      - name: A\n        action: CreateFile\n        inputs:\n          - path: {{ Dest }}\n",
    );
    expect(&text, "8:19", "unquoted {{ ... }} reference");
    let rendered = errors(&text).to_string();
    assert!(
        rendered.contains("hint: quote it: write '{{ Dest }}'"),
        "{rendered}"
    );
}

#[test]
fn unquoted_reference_in_a_command_list() {
    let text = with_step(
        "      - name: A\n        action: ExecuteBash\n        inputs:\n          commands:\n            - {{ Cmd }}\n",
    );
    let rendered = errors(&text).to_string();
    assert!(rendered.contains("doc.yaml:9:15: error:"), "{rendered}");
    assert!(rendered.contains("quote it"), "{rendered}");
    assert_eq!(
        errors(&text).error_count(),
        1,
        "reported once, not twice:\n{rendered}"
    );
}

#[test]
fn step_rules() {
    expect(
        &with_step(
            "      - name: A\n        action: ExecuteBsh\n        inputs: {commands: [x]}\n",
        ),
        "6:17",
        "unknown action `ExecuteBsh`",
    );
    assert!(errors(&with_step(
        "      - name: A\n        action: ExecuteBsh\n        inputs: {commands: [x]}\n"
    ))
    .to_string()
    .contains("did you mean `ExecuteBash`?"));
    expect(
        &with_step("      - name: A\n        action: ExecuteBash\n        inputs: {commands: [x]}\n      - name: A\n        action: ExecuteBash\n        inputs: {commands: [y]}\n"),
        "8:15",
        "step name `A` is already used in this phase (at 5:15)",
    );
    expect(
        &with_step("      - name: A\n        action: ExecuteBash\n        timeoutSeconds: 0\n        inputs: {commands: [x]}\n"),
        "7:25",
        "`timeoutSeconds` must be at least 1, or -1",
    );
    expect(
        &with_step("      - name: A\n        action: ExecuteBash\n        maxAttempts: 0\n        inputs: {commands: [x]}\n"),
        "7:22",
        "`maxAttempts` must be between 1 and",
    );
    expect(
        &with_step("      - name: A\n        action: ExecuteBash\n        onfailure: Ignore\n        inputs: {commands: [x]}\n"),
        "7:9",
        "unknown key `onfailure` in a step",
    );
    expect(
        &with_step("      - name: A\n        action: ExecuteBash\n        onFailure: ignore\n        inputs: {commands: [x]}\n"),
        "7:20",
        "`onFailure` must be Abort, Continue or Ignore, not `ignore`",
    );
    expect(
        &with_step("      - name: A\n        action: ExecuteDocument\n        maxAttempts: 2\n        inputs: {document: x.yaml}\n"),
        "7:22",
        "ExecuteDocument runs once",
    );
    expect(
        &with_step(
            "      - name: a.b\n        action: ExecuteBash\n        inputs: {commands: [x]}\n",
        ),
        "5:15",
        "step name `a.b` is not valid",
    );
}

#[test]
fn input_rules() {
    expect(
        &with_step("      - name: A\n        action: ExecuteBash\n"),
        "5:9",
        "ExecuteBash needs `inputs`",
    );
    expect(
        &with_step("      - name: A\n        action: ExecuteBash\n        inputs:\n          - commands: [x]\n"),
        "8:11",
        "the inputs of ExecuteBash are a mapping, not a list",
    );
    expect(
        &with_step("      - name: A\n        action: CopyFile\n        inputs:\n          source: a\n          destination: b\n"),
        "8:11",
        "the inputs of CopyFile are a list of operations",
    );
    expect(
        &with_step(
            "      - name: A\n        action: CopyFile\n        inputs:\n          - source: a\n",
        ),
        "8:13",
        "CopyFile needs `destination`",
    );
    expect(
        &with_step("      - name: A\n        action: SetFilePermissions\n        inputs:\n          - path: a\n            permissions: rwx\n"),
        "9:26",
        "`permissions` of SetFilePermissions must be octal permission digits",
    );
    expect(
        &with_step("      - name: A\n        action: ReadFile\n        inputs:\n          - path: a\n            encoding: latin1\n"),
        "9:23",
        "`encoding` of ReadFile must be an encoding",
    );
    expect(
        &with_step("      - name: A\n        action: CopyFile\n        inputs:\n          - source: a\n            destination: b\n            overwrite: sometimes\n"),
        "10:24",
        "`overwrite` of CopyFile must be true or false",
    );
    expect(
        &with_step("      - name: A\n        action: ExecuteBash\n        inputs:\n          commands: echo hi\n"),
        "8:21",
        "`commands` of ExecuteBash must be a list of strings",
    );
    expect(
        &with_step("      - name: A\n        action: ExecuteBash\n        inputs:\n          commands:\n            - echo a: b\n"),
        "9:15",
        "items of `commands` must be strings",
    );
    // Unknown inputs are warnings (AWS's own samples carry some).
    let w = warnings(&with_step(
        "      - name: A\n        action: DeleteFile\n        inputs:\n          - path: a\n            force: true\n",
    ));
    assert!(w.contains("doc.yaml:9:13: warning:"), "{w}");
    assert!(w.contains("`force` is not an input of DeleteFile"), "{w}");
}

#[test]
fn parameter_and_constant_rules() {
    let text = "schemaVersion: 1.0\nparameters:\n  - ab:\n      type: string\n  - Good_Name:\n      type: int\n  - Dup:\n      type: string\nconstants:\n  - Dup:\n      type: string\n      value: x\n  - NoValue:\n      type: string\nphases:\n  - name: build\n    steps:\n      - name: A\n        action: ExecuteBash\n        inputs: {commands: [x]}\n";
    let d = errors(text);
    let r = d.to_string();
    for (pos, msg) in [
        ("3:5", "`ab`: names in `parameters` are 3 to 128 characters"),
        ("6:13", "the only supported type is `string`, not `int`"),
        ("10:5", "`Dup` is declared twice (first at 7:5)"),
        ("13:5", "constant `NoValue` needs a `value`"),
    ] {
        assert!(
            r.lines()
                .any(|l| l.starts_with(&format!("doc.yaml:{pos}: error:")) && l.contains(msg)),
            "missing {pos} {msg} in:\n{r}"
        );
    }
    assert_eq!(
        d.error_count(),
        4,
        "all errors of the document are reported:\n{r}"
    );
}

#[test]
fn loop_rules() {
    let l = |body: &str| {
        with_step(&format!(
            "      - name: A\n        action: ExecuteBash\n        loop:\n{body}        inputs: {{commands: [x]}}\n"
        ))
    };
    expect(
        &l("          for: {start: 1, end: 5, updateBy: 0}\n"),
        "8:45",
        "`updateBy` must not be 0",
    );
    expect(
        &l("          for: {start: 1, end: 5, updateBy: -1}\n"),
        "8:45",
        "never reaches its end: `updateBy` must be positive",
    );
    expect(
        &l("          for: {start: 0, end: 1000000, updateBy: 1}\n"),
        "8:51",
        "the limit is 10000",
    );
    expect(
        &l("          forEach:\n            list: a|b\n            delimiter: '|'\n"),
        "10:24",
        "`|` is not an allowed delimiter",
    );
    expect(
        &l("          for: {start: 1, end: 2, updateBy: 1}\n          forEach: [a]\n"),
        "9:20",
        "a loop has either `for` or `forEach`, not both",
    );
    expect(
        &l("          name: loop\n          forEach: [a]\n"),
        "8:17",
        "loop name `loop` is not valid",
    );
    let text = with_step(
        "      - name: A\n        action: ExecuteBash\n        loop: {name: same, forEach: [a]}\n        inputs: {commands: [x]}\n      - name: B\n        action: ExecuteBash\n        loop: {name: same, forEach: [b]}\n        inputs: {commands: [x]}\n",
    );
    expect(
        &text,
        "11:22",
        "loop name `same` is already used in this phase",
    );
}

#[test]
fn condition_rules() {
    let c = |body: &str| {
        with_step(&format!(
            "      - name: A\n        action: ExecuteBash\n        if:\n{body}        inputs: {{commands: [x]}}\n"
        ))
    };
    expect(
        &c("          stringEquals: a\n          numberEquals: 1\n          value: a\n"),
        "9:11",
        "a condition has one operator; `numberEquals` is a second one",
    );
    expect(
        &c("          stringEquals: a\n"),
        "8:11",
        "`stringEquals` needs `value:`",
    );
    expect(
        &c("          fileExists: /x\n          then: Maybe\n"),
        "9:17",
        "`then` must be Execute, Skip or Abort",
    );
    expect(
        &c("          numberLessThan: abc\n          value: 1\n"),
        "8:27",
        "`numberLessThan` compares numbers",
    );
    expect(
        &c("          patternMatches: '(['\n          value: x\n"),
        "8:27",
        "not a valid regular expression",
    );
    expect(
        &c("          fileExists: /x\n          value: y\n"),
        "9:11",
        "unexpected key `value`",
    );
    let deep = c("          not:\n            not:\n              not:\n                not:\n                  not:\n                    fileExists: /x\n");
    expect(&deep, "12:19", "conditions nest at most 4 levels");
    // Four levels are fine.
    let ok = c("          not:\n            not:\n              not:\n                not:\n                  fileExists: /x\n");
    warnings(&ok);
}

#[test]
fn reference_rules() {
    expect(
        &with_step("      - name: A\n        action: ExecuteBash\n        inputs:\n          commands: ['echo {{ build.B.outputs.stdout }}']\n      - name: B\n        action: ExecuteBash\n        inputs: {commands: [x]}\n"),
        "8:22",
        "refers to step `B`, which has not run yet",
    );
    expect(
        &with_step("      - name: A\n        action: ExecuteBash\n        inputs:\n          commands: ['echo {{ build.Nope.outputs.stdout }}']\n"),
        "8:22",
        "refers to step `Nope`, which phase `build` does not have",
    );
    expect(
        &with_step("      - name: A\n        action: CreateFile\n        inputs: [{path: a}]\n      - name: B\n        action: ExecuteBash\n        inputs:\n          commands: ['echo {{ build.A.outputs.stdout }}']\n"),
        "11:22",
        "CreateFile has no outputs",
    );
    expect(
        &with_step("      - name: A\n        action: ExecuteBash\n        inputs:\n          commands: ['echo {{ aws:ssm:/my/param }}']\n"),
        "8:22",
        "not available outside AWS",
    );
    // An unknown plain name is left as written, with a warning that suggests the near one.
    let w = warnings(
        "schemaVersion: 1.0\nparameters:\n  - Version:\n      type: string\n      default: '1'\nphases:\n  - name: build\n    steps:\n      - name: A\n        action: ExecuteBash\n        inputs:\n          commands: ['echo {{ Versoin }}']\n",
    );
    assert!(
        w.contains("`{{ Versoin }}` is not a parameter or constant"),
        "{w}"
    );
    assert!(w.contains("did you mean `{{ Version }}`?"), "{w}");
}

#[test]
fn document_rules() {
    expect(
        "schemaVersion: 2.0\nphases: []\n",
        "1:16",
        "`schemaVersion` must be 1.0, not `2.0`",
    );
    expect("schemaVersion: 1.0\n", "1:1", "missing `phases`");
    expect(
        "schemaVersion: 1.0\nphase: []\n",
        "2:1",
        "unknown key `phase` in a component document",
    );
    expect(
        "schemaVersion: 1.0\nphases:\n  - name: build\n    steps: []\n  - name: build\n    steps: []\n",
        "5:11",
        "phase `build` is defined twice",
    );
    expect(
        "- a\n- b\n",
        "1:1",
        "a component document is a YAML mapping",
    );
    expect(
        "schemaVersion: 1.0\nphases:\n  - name: build\n    steps:\n  - x: [\n",
        "6:1",
        "invalid YAML",
    );
}

#[test]
fn errors_are_sorted_and_all_reported() {
    let text = with_step(
        "      - name: A\n        action: Nope\n      - name: B\n        action: CopyFile\n        inputs: {}\n      - name: C\n        action: ExecuteBash\n        timeoutSeconds: soon\n        inputs: {commands: [x]}\n",
    );
    let d = errors(&text);
    assert_eq!(d.error_count(), 3, "{d}");
    let lines: Vec<u32> = d
        .items
        .iter()
        .filter_map(|i| i.span.map(|s| s.start.line))
        .collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted);
    let _ = Arc::new(());
}
