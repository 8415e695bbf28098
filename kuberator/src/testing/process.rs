//! The control plane's processes: one process group per `TestEnv`, a watchdog that kills the
//! group when the test process dies, and a synchronous kill-and-reap on drop.
//!
//! Without `unsafe` there is no `prctl(PR_SET_PDEATHSIG)` in the child, so the group gets a
//! watchdog instead: `sh` reading a pipe whose only writer is the test process. When the test
//! process exits for any reason (including `SIGKILL`), the kernel closes the pipe, `read` returns
//! and the watchdog sends `SIGKILL` to the whole group. On an ordinary drop the group is killed
//! directly and every child is reaped before `drop` returns.

use std::{
    fs::File,
    io::{self, Read, Seek, SeekFrom},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
};

use anyhow::Context as _;

/// Reads its stdin until end-of-file (the test process is gone), then kills its process group.
const WATCHDOG: &str = "read -r _line; kill -KILL 0";

/// One running binary.
struct Running {
    name: &'static str,
    child: Child,
    log: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    cwd: PathBuf,
    /// Killed on purpose (a fault), not yet started again.
    down: bool,
}

/// A process that exited while it should have been running.
#[derive(Debug)]
pub(crate) struct Exited {
    pub(crate) name: &'static str,
    pub(crate) status: ExitStatus,
    pub(crate) log: PathBuf,
}

/// The processes of one control plane, all in one process group led by the watchdog.
pub(crate) struct Processes {
    pgid: u32,
    watchdog: Option<Child>,
    children: Vec<Running>,
}

impl Processes {
    /// Starts the watchdog, which leads a new process group.
    pub(crate) fn new() -> anyhow::Result<Processes> {
        let watchdog = Command::new("/bin/sh")
            .args(["-c", WATCHDOG])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .context("starting the watchdog (`/bin/sh`) of the control plane's process group")?;
        Ok(Processes {
            pgid: watchdog.id(),
            watchdog: Some(watchdog),
            children: Vec::new(),
        })
    }

    /// Starts `program` in the group with stdout and stderr appended to `log`; returns its pid.
    pub(crate) fn spawn(
        &mut self,
        name: &'static str,
        program: &Path,
        args: &[String],
        log: PathBuf,
        cwd: &Path,
    ) -> anyhow::Result<u32> {
        let out = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = self.start(name, program, args, cwd, out, &log)?;
        let pid = child.id();
        self.children.push(Running {
            name,
            child,
            log,
            program: program.to_owned(),
            args: args.to_vec(),
            cwd: cwd.to_owned(),
            down: false,
        });
        Ok(pid)
    }

    fn start(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        cwd: &Path,
        out: File,
        log: &Path,
    ) -> anyhow::Result<Child> {
        let err = out
            .try_clone()
            .with_context(|| format!("opening {}", log.display()))?;
        let pgid = i32::try_from(self.pgid).context("process group id out of range")?;
        Command::new(program)
            .args(args)
            .current_dir(cwd)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(pgid)
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))
    }

    fn running(&mut self, name: &str) -> anyhow::Result<&mut Running> {
        self.children
            .iter_mut()
            .find(|running| running.name == name)
            .with_context(|| format!("no {name} process in this control plane"))
    }

    /// Sends `signal` to the process `name` (e.g. `SIGSTOP` to pause it, `SIGCONT` to resume).
    pub(crate) fn signal(
        &mut self,
        name: &str,
        signal: rustix::process::Signal,
    ) -> anyhow::Result<()> {
        let running = self.running(name)?;
        let pid = i32::try_from(running.child.id())
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .context("process id out of range")?;
        rustix::process::kill_process(pid, signal)
            .with_context(|| format!("sending {signal:?} to {name}"))
    }

    /// Kills the process `name` (`SIGKILL`) and reaps it; [`restart`](Self::restart) starts it
    /// again with the same arguments (same ports, same certificates, same data).
    pub(crate) fn kill(&mut self, name: &str) -> anyhow::Result<()> {
        let running = self.running(name)?;
        let _ = running.child.kill();
        running
            .child
            .wait()
            .with_context(|| format!("reaping {name}"))?;
        running.down = true;
        Ok(())
    }

    /// Starts the process `name` again (killing it first if it still runs), appending to its
    /// log; returns the new pid.
    pub(crate) fn restart(&mut self, name: &str) -> anyhow::Result<u32> {
        if !self.running(name)?.down {
            self.kill(name)?;
        }
        let (program, args, cwd, log) = {
            let running = self.running(name)?;
            (
                running.program.clone(),
                running.args.clone(),
                running.cwd.clone(),
                running.log.clone(),
            )
        };
        let out = File::options()
            .append(true)
            .open(&log)
            .with_context(|| format!("opening {}", log.display()))?;
        let child = self.start(name, &program, &args, &cwd, out, &log)?;
        let pid = child.id();
        let running = self.running(name)?;
        running.child = child;
        running.down = false;
        Ok(pid)
    }

    /// The first process that has exited, if any.
    pub(crate) fn exited(&mut self) -> Option<Exited> {
        self.children
            .iter_mut()
            .filter(|r| !r.down)
            .find_map(|running| {
                match running.child.try_wait() {
                    Ok(Some(status)) => Some(status),
                    // Cannot tell: report nothing, the readiness timeout still applies.
                    Ok(None) | Err(_) => None,
                }
                .map(|status| Exited {
                    name: running.name,
                    status,
                    log: running.log.clone(),
                })
            })
    }

    /// Kills the whole group with `SIGKILL` and reaps every process; idempotent.
    pub(crate) fn kill_all(&mut self) {
        if let Some(pgid) = i32::try_from(self.pgid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            && self.watchdog.is_some()
        {
            // ESRCH (group already gone) is fine.
            let _ = rustix::process::kill_process_group(pgid, rustix::process::Signal::KILL);
        }
        for running in &mut self.children {
            // The group kill covered them; this is for a child that left the group.
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
        self.children.clear();
        if let Some(mut watchdog) = self.watchdog.take() {
            drop(watchdog.stdin.take());
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// The last `lines` lines of a log file (at most the last 64 KiB of it).
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    const MAX: u64 = 64 * 1024;
    let read = || -> io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        file.seek(SeekFrom::Start(len.saturating_sub(MAX)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("(cannot read {}: {err})", path.display()),
    }
}
