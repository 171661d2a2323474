//! `kiln-agent`: kiln's agent inside a VM guest. kiln copies it into the guest's `/run/kiln`
//! through the QEMU guest agent at every boot and starts it on a virtio-serial port; it then
//! serves the same protocol as a sandbox's agent (streamed output, file operations, transfer).
//!
//! Command line: `--port /dev/virtio-ports/dev.kiln.agent.0 --config '{"working_dir":..,"env":..}'`.

use std::io::{Read, Write};

use crate::agent::{serve, AgentConfig};

#[derive(serde::Deserialize)]
struct Config {
    working_dir: String,
    env: Vec<(String, String)>,
}

fn fail(msg: &str) -> ! {
    eprintln!("kiln-agent: {msg}");
    std::process::exit(2)
}

/// Runs the agent with the process's command line (`args[1..]` as above). Never returns.
pub fn agent_main(args: &[String]) -> ! {
    let mut port = None;
    let mut config = None;
    let mut i = 0;
    while i < args.len() {
        match (args[i].as_str(), args.get(i + 1)) {
            ("--port", Some(v)) => port = Some(v.clone()),
            ("--config", Some(v)) => config = Some(v.clone()),
            _ => fail("usage: kiln-agent --port DEVICE --config JSON (kiln starts it, not people)"),
        }
        i += 2;
    }
    let (Some(port), Some(config)) = (port, config) else {
        fail("usage: kiln-agent --port DEVICE --config JSON (kiln starts it, not people)")
    };
    let config: Config =
        serde_json::from_str(&config).unwrap_or_else(|e| fail(&format!("bad --config: {e}")));
    // Detach from the guest agent's process: the QEMU guest agent waits for its children, and
    // kiln's agent must live on until kiln closes the port.
    let _ = nix::unistd::setsid();
    let device = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&port)
        .unwrap_or_else(|e| fail(&format!("cannot open {port}: {e}")));
    let mut reader = device
        .try_clone()
        .unwrap_or_else(|e| fail(&format!("cannot duplicate {port}: {e}")));
    let mut writer = device;
    // A character device is read and written by blocking calls on threads of their own (tokio's
    // file type runs one operation at a time, so a pending read would hold every write back).
    let (agent_in, mut feed) = tokio::io::duplex(1 << 20);
    let (mut drain, agent_out) = tokio::io::duplex(1 << 20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| fail(&format!("cannot start: {e}")));
    let handle = runtime.handle().clone();
    std::thread::spawn(move || {
        use tokio::io::AsyncWriteExt;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match reader.read(&mut buf) {
                // The host side of a virtio port is not connected yet or went away: the device
                // reads end-of-file; kiln closing the port is the end of the conversation.
                Ok(0) => break,
                Ok(n) => {
                    if handle.block_on(feed.write_all(&buf[..n])).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        let _ = handle.block_on(feed.shutdown());
    });
    let handle = runtime.handle().clone();
    std::thread::spawn(move || {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match handle.block_on(drain.read(&mut buf)) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if writer
                        .write_all(&buf[..n])
                        .and_then(|_| writer.flush())
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
    });
    let (r, _) = tokio::io::split(agent_in);
    let (_, w) = tokio::io::split(agent_out);
    runtime.block_on(serve(
        r,
        w,
        AgentConfig {
            working_dir: config.working_dir,
            env: config.env,
        },
        Vec::new(),
    ));
    std::process::exit(0)
}
