//! Showing a run on the terminal: a live line for the running step (with elapsed time) on a
//! TTY, plain lines otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use kiln_instance::Stream;
use kiln_toe::events::{Event, Observer, OwnedEvent, StepId};
use kiln_toe::report::StepStatus;

/// Prints progress to stderr.
pub struct Terminal {
    bar: Option<ProgressBar>,
    quiet: bool,
    state: Mutex<()>,
}

fn indent(depth: usize) -> String {
    "  ".repeat(depth)
}

fn label(s: &StepId) -> String {
    format!("{}{} › {} ({})", indent(s.depth), s.phase, s.step, s.action)
}

impl Terminal {
    /// A renderer; `quiet` hides step output (it is still in console.log).
    pub fn new(quiet: bool) -> Self {
        let tty = std::io::stderr().is_terminal() && std::env::var_os("KILN_PLAIN").is_none();
        let bar = tty.then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar
        });
        Terminal {
            bar,
            quiet,
            state: Mutex::new(()),
        }
    }

    /// Prints a line above the live line (or plainly when not a terminal).
    pub fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => eprintln!("{text}"),
        }
    }

    /// A passing status (bootstrap output, say): shown in the live line on a terminal, printed
    /// as a plain line otherwise.
    pub fn progress(&self, text: &str) {
        match &self.bar {
            Some(bar) => {
                bar.set_message(text.chars().take(100).collect::<String>());
                bar.enable_steady_tick(Duration::from_millis(120));
            }
            None => eprintln!("{text}"),
        }
    }

    /// Clears the live line.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Terminal {
    fn event(&self, event: &Event<'_>) {
        self.step(&OwnedEvent::from(event));
    }
}

impl Terminal {
    /// Shows one event of the component engine (of a run here, or of a build anywhere).
    pub fn step(&self, event: &OwnedEvent) {
        let _guard = self.state.lock();
        match event {
            OwnedEvent::DocumentStarted { depth, file, name } => {
                let name = if name.is_empty() {
                    String::new()
                } else {
                    format!(" ({name})")
                };
                self.line(&format!("{}document {file}{name}", indent(*depth)));
            }
            OwnedEvent::PhaseStarted { depth, phase, .. } => {
                self.line(&format!("{}phase {phase}", indent(*depth)));
            }
            OwnedEvent::StepStarted { step } => match &self.bar {
                Some(bar) => {
                    bar.reset_elapsed();
                    bar.set_message(label(step));
                    bar.enable_steady_tick(Duration::from_millis(120));
                }
                None => eprintln!("{} started", label(step)),
            },
            OwnedEvent::Output { step, stream, line } => {
                if !self.quiet {
                    let mark = if *stream == Stream::Stderr { "!" } else { "|" };
                    self.line(&format!("{}  {mark} {line}", indent(step.depth)));
                }
            }
            OwnedEvent::Note { step, message } => {
                self.line(&format!("{}  > {message}", indent(step.depth)));
            }
            OwnedEvent::Warning { message } => self.line(&format!("warning: {message}")),
            OwnedEvent::StepFinished {
                step,
                status,
                duration_ms,
                attempts,
                failure_message,
            } => {
                let secs = *duration_ms as f64 / 1000.0;
                let (mark, word) = match status {
                    StepStatus::Success => ("✔", "ok"),
                    StepStatus::Failed => ("✘", "failed"),
                    StepStatus::Skipped => ("↷", "skipped"),
                    StepStatus::IgnoredFailure => ("!", "failed (ignored)"),
                };
                let attempts = if *attempts > 1 {
                    format!(", {attempts} attempts")
                } else {
                    String::new()
                };
                let mut text = format!("{mark} {} {word} in {secs:.2} s{attempts}", label(step));
                if !failure_message.is_empty() {
                    text.push_str(&format!(
                        "\n{}    {}",
                        indent(step.depth),
                        failure_message.replace('\n', &format!("\n{}    ", indent(step.depth)))
                    ));
                }
                self.line(&text);
                if let Some(bar) = &self.bar {
                    bar.disable_steady_tick();
                    bar.set_message(String::new());
                }
            }
            OwnedEvent::PhaseFinished { .. } | OwnedEvent::DocumentFinished { .. } => {}
        }
    }
}
