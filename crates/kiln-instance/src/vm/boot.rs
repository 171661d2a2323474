//! Bringing a VM up: QEMU started (and started again under TCG when KVM runs nothing), the
//! wait for the QEMU guest agent's first answer while the console is watched for a boot that
//! failed, the guest's own clock read to place its kernel's start on the host's clock, and
//! kiln's agent brought in through the guest agent.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::keeper::Keeper;
use super::qmp::{self, Qga, Qmp};
use super::{boot_id, watch_events, Accel, Running, Vm, AGENT_PORT, GUEST_AGENT_PATH, KVM_GRACE};
use crate::client::{AgentClient, ConnectError};
use crate::InstanceError;

/// How often the wait for the guest agent looks at QEMU and the console (a boot that failed
/// is noticed this soon after the console says so).
const BOOT_POLL: Duration = Duration::from_millis(100);

/// How long one guest agent connection waits for its answer before kiln connects again. QEMU
/// keeps what kiln wrote until the guest opens its port, so a waiting connection hears the
/// agent's first answer as soon as it is given; a new connection is only for an agent that
/// took the request and went away (one that restarted).
const AGENT_ATTEMPT: Duration = Duration::from_secs(5);

/// What one boot took, as the host saw it.
#[derive(Debug, Clone, Copy)]
pub(super) struct BootTiming {
    /// QEMU's start (or the guest's reset) to the guest agent's first answer.
    pub duration: Duration,
    /// QEMU's start to the guest kernel's clock starting (firmware, bootloader, the kernel
    /// unpacking itself); none when the guest's uptime could not be read.
    pub kernel_started: Option<Duration>,
    /// The guest agent's first answer to kiln's agent serving.
    pub kiln_agent: Duration,
}

/// Why the wait for the guest agent ended without it.
pub(super) enum Silent {
    /// QEMU ended.
    Ended(std::process::ExitStatus),
    /// KVM ran nothing for [`KVM_GRACE`].
    KvmSilent,
}

/// What a failed wait says: for the first boot, or after a reboot.
#[derive(Clone, Copy)]
pub(super) struct WaitWords {
    /// Before a fatal console line.
    pub fatal: &'static str,
    /// When the boot timeout passed.
    pub timeout: &'static str,
}

/// The words of the first boot.
pub(super) const FIRST_BOOT: WaitWords = WaitWords {
    fatal: "the VM could not boot",
    timeout: "the VM did not boot to its guest agent",
};

/// The words of a boot after a reboot.
pub(super) const REBOOT: WaitWords = WaitWords {
    fatal: "the VM could not boot again",
    timeout: "the VM did not come back from its reboot",
};

/// Where the compressed agent lands first: /run is a tmpfs on every guest kiln boots.
const PACKED_AGENT: &str = "/run/kiln-agent.gz";

/// The exit code of the unpacking program in a guest without gzip.
const NO_GZIP: i64 = 3;

type Attempt<'a> = Pin<Box<dyn Future<Output = Result<Qga, qmp::ProtocolError>> + Send + 'a>>;

impl Vm {
    /// Starts QEMU and waits for the guest agent, then brings kiln's agent in.
    pub(super) async fn boot(&self) -> Result<(), InstanceError> {
        let started = Instant::now();
        let mut accel = self.accel();
        let mut keeper = self.spawn_qemu(accel).await?;
        let mut launched = Instant::now();
        let qga = loop {
            let silent = match self
                .wait_for_agent(&mut keeper, launched, accel == Accel::Kvm, FIRST_BOOT)
                .await?
            {
                Ok(q) => break q,
                Err(s) => s,
            };
            match silent {
                Silent::Ended(status) => {
                    let qemu_log =
                        std::fs::read_to_string(self.spec.dir.join("qemu.log")).unwrap_or_default();
                    if accel != Accel::Kvm {
                        return Err(self
                            .boot_failure(&format!("QEMU ended ({status}): {}", qemu_log.trim())));
                    }
                    tracing::info!("QEMU ended under KVM ({status}): {qemu_log}; trying TCG");
                }
                Silent::KvmSilent => {
                    // /dev/kvm answers but runs nothing (nested virtualisation): software it is.
                    tracing::info!("KVM gave no console output in {KVM_GRACE:?}; using TCG");
                    keeper.kill().await;
                }
            }
            self.remember_kvm_broken();
            accel = Accel::Tcg;
            keeper = self.spawn_qemu(accel).await?;
            launched = Instant::now();
        };
        let answered = launched.elapsed();
        if let Ok(mut a) = self.accel.lock() {
            *a = accel;
        }
        tracing::info!(accel = ?accel, "VM {} booted in {:?}", self.spec.id, started.elapsed());
        let qmp = Qmp::connect(&self.sockets.join("qmp.sock"))
            .await
            .map_err(|e| InstanceError::Op(format!("QMP: {e}")))?;
        let watcher = Qmp::connect(&self.sockets.join("events.sock"))
            .await
            .map_err(|e| InstanceError::Op(format!("QMP: {e}")))?;
        tokio::spawn(watch_events(
            watcher,
            self.events.clone(),
            self.current.clone(),
        ));
        let client = self.after_guest_agent(qga, launched, answered).await?;
        *self.running.write().await = Some(Arc::new(Running {
            keeper,
            qmp: tokio::sync::Mutex::new(qmp),
            client,
        }));
        Ok(())
    }

    /// Waits for the guest agent's first answer, watching QEMU and the console meanwhile. A
    /// fatal console line, or no answer within the boot timeout, ends QEMU and is an error
    /// quoting the console; QEMU ending, or KVM running nothing (watched when `kvm_grace`), is
    /// for the caller to decide.
    pub(super) async fn wait_for_agent(
        &self,
        keeper: &mut Keeper,
        launched: Instant,
        kvm_grace: bool,
        words: WaitWords,
    ) -> Result<Result<Qga, Silent>, InstanceError> {
        let sock = self.sockets.join("qga.sock");
        let mut seen_output = false;
        let mut attempt: Option<Attempt<'_>> = None;
        let mut retry_at = Instant::now();
        loop {
            if let Ok(Some(status)) = keeper.try_wait() {
                return Ok(Err(Silent::Ended(status)));
            }
            if self.pump_console() > 0 {
                seen_output = true;
            }
            if let Some(line) = self.watch.lock().ok().and_then(|w| w.fatal.clone()) {
                keeper.kill().await;
                return Err(self.boot_failure(&format!("{} ({})", words.fatal, line.trim())));
            }
            if kvm_grace && !seen_output && launched.elapsed() > KVM_GRACE {
                return Ok(Err(Silent::KvmSilent));
            }
            if launched.elapsed() > self.spec.boot_timeout {
                keeper.kill().await;
                return Err(self.boot_failure(&format!(
                    "{} within {} s",
                    words.timeout,
                    self.spec.boot_timeout.as_secs()
                )));
            }
            if attempt.is_none() && Instant::now() >= retry_at && sock.exists() {
                attempt = Some(Box::pin(Qga::connect(&sock, AGENT_ATTEMPT)));
            }
            let Some(a) = attempt.as_mut() else {
                tokio::time::sleep(BOOT_POLL).await;
                continue;
            };
            tokio::select! {
                r = a => {
                    attempt = None;
                    match r {
                        Ok(q) => return Ok(Ok(q)),
                        Err(e) => {
                            tracing::debug!("guest agent of VM {}: {e}", self.spec.id);
                            retry_at = Instant::now() + BOOT_POLL;
                        }
                    }
                }
                _ = tokio::time::sleep(BOOT_POLL) => {}
            }
        }
    }

    /// After the guest agent's first answer (`answered` after `launched`): the guest's clock,
    /// which places its kernel's start on the host's, then kiln's agent. Records the boot.
    pub(super) async fn after_guest_agent(
        &self,
        mut qga: Qga,
        launched: Instant,
        answered: Duration,
    ) -> Result<Arc<AgentClient>, InstanceError> {
        let t0 = Instant::now();
        let kernel_started = match qga.uptime().await {
            Ok((up, at)) => at
                .into_std()
                .checked_duration_since(launched)
                .and_then(|since_launch| since_launch.checked_sub(up)),
            Err(e) => {
                tracing::debug!("reading the uptime of VM {}: {e}", self.spec.id);
                None
            }
        };
        let client = self.start_agent(qga).await?;
        let timing = BootTiming {
            duration: answered,
            kernel_started,
            kiln_agent: t0.elapsed(),
        };
        tracing::debug!("VM {} boot: {timing:?}", self.spec.id);
        if let Ok(mut b) = self.boots.lock() {
            b.push(timing);
        }
        Ok(client)
    }

    pub(super) fn remember_kvm_broken(&self) {
        if let Some(p) = &self.spec.kvm_verdict {
            if let Some(d) = p.parent() {
                let _ = std::fs::create_dir_all(d);
            }
            let _ = std::fs::write(p, format!("{} tcg\n", boot_id()));
        }
    }

    /// The agent binary, plain or gzip-compressed (read and compressed once per VM).
    fn agent_bytes(&self, compressed: bool) -> Result<Vec<u8>, InstanceError> {
        let mut cache = self
            .agent_cache
            .lock()
            .map_err(|_| InstanceError::Op("agent cache poisoned".into()))?;
        let slot = if compressed {
            &mut cache.1
        } else {
            &mut cache.0
        };
        if let Some(b) = slot {
            return Ok(b.clone());
        }
        let plain = std::fs::read(&self.spec.agent)
            .map_err(|e| InstanceError::io(format!("reading {}", self.spec.agent.display()), e))?;
        let bytes = if compressed {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            gz.write_all(&plain)
                .and_then(|_| gz.finish())
                .map_err(|e| InstanceError::io("compressing kiln-agent", e))?
        } else {
            plain
        };
        *slot = Some(bytes.clone());
        Ok(bytes)
    }

    /// Puts `kiln-agent` at [`GUEST_AGENT_PATH`], on a tmpfs of kiln's own (the guest's /run is
    /// often mounted noexec, by initramfs-tools; kiln's folder is gone at the next boot and never
    /// part of the disk). The guest agent moves about 1 to 2 MB/s under TCG, so the agent travels
    /// gzip-compressed, and one program in the guest makes the folder and unpacks it; a guest
    /// without gzip gets it plain.
    async fn copy_agent_in(&self, qga: &mut Qga) -> Result<(), InstanceError> {
        let fail = |what: &str, e: qmp::ProtocolError| {
            InstanceError::Op(format!("{what} in the guest: {e}"))
        };
        let t0 = Instant::now();
        qga.write_file(PACKED_AGENT, &self.agent_bytes(true)?)
            .await
            .map_err(|e| fail("copying kiln-agent", e))?;
        tracing::debug!(
            "VM {}: kiln-agent copied in {:?}",
            self.spec.id,
            t0.elapsed()
        );
        let unpack = format!(
            "mkdir -p /run/kiln && {{ mountpoint -q /run/kiln || mount -t tmpfs -o mode=0755 kiln /run/kiln; }} || exit 1; \
             if ! command -v gzip >/dev/null; then rm -f {PACKED_AGENT}; exit {NO_GZIP}; fi; \
             gzip -dc {PACKED_AGENT} > {GUEST_AGENT_PATH} && rm -f {PACKED_AGENT} && chmod 755 {GUEST_AGENT_PATH}"
        );
        let (mut code, _, mut err) = qga
            .run("/bin/sh", &["-c", &unpack], Duration::from_secs(60))
            .await
            .map_err(|e| fail("unpacking kiln-agent", e))?;
        if code == NO_GZIP {
            qga.write_file(GUEST_AGENT_PATH, &self.agent_bytes(false)?)
                .await
                .map_err(|e| fail("copying kiln-agent", e))?;
            (code, _, err) = qga
                .run(
                    "/bin/chmod",
                    &["755", GUEST_AGENT_PATH],
                    Duration::from_secs(60),
                )
                .await
                .map_err(|e| fail("making kiln-agent executable", e))?;
        }
        if code != 0 {
            return Err(InstanceError::Op(format!(
                "cannot put kiln-agent on a tmpfs at /run/kiln in the guest: {}",
                err.trim()
            )));
        }
        tracing::debug!(
            "VM {}: kiln-agent in place in {:?}",
            self.spec.id,
            t0.elapsed()
        );
        Ok(())
    }

    pub(super) async fn start_agent(
        &self,
        mut qga: Qga,
    ) -> Result<Arc<AgentClient>, InstanceError> {
        let fail = |what: &str, e: qmp::ProtocolError| {
            InstanceError::Op(format!("{what} in the guest: {e}"))
        };
        self.copy_agent_in(&mut qga).await?;
        let t0 = Instant::now();
        // Connect before the agent starts, so its first words are not lost.
        let stream = tokio::net::UnixStream::connect(self.sockets.join("agent.sock"))
            .await
            .map_err(|e| InstanceError::io("connecting to the VM's agent port", e))?;
        let (r, w) = stream.into_split();
        let config = serde_json::json!({
            "working_dir": self.spec.working_dir,
            "env": self.spec.env,
        })
        .to_string();
        qga.spawn(
            GUEST_AGENT_PATH,
            &[
                "--port",
                &format!("/dev/virtio-ports/{AGENT_PORT}"),
                "--config",
                &config,
            ],
            false,
        )
        .await
        .map_err(|e| fail("starting kiln-agent", e))?;
        tracing::debug!(
            "VM {}: kiln-agent started at {:?}",
            self.spec.id,
            t0.elapsed()
        );
        match AgentClient::connect(r, w, "VM", self.console.clone(), Duration::from_secs(120)).await
        {
            Ok((client, _)) => {
                if let Ok(mut c) = self.current.lock() {
                    *c = Some(client.clone());
                }
                Ok(client)
            }
            Err(ConnectError::Fatal(m)) => {
                Err(InstanceError::Op(format!("kiln-agent in the VM: {m}")))
            }
            Err(ConnectError::Gone) => {
                Err(self.boot_failure("kiln-agent did not answer in the VM"))
            }
            Err(e @ ConnectError::Version { .. }) => {
                Err(InstanceError::Op(format!("kiln-agent in the VM: {e}")))
            }
        }
    }
}
