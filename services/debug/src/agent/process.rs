//! Starting the developer's processes: with a pseudo-terminal or with pipes,
//! on the gateway host or inside one pod's namespaces.

use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;

/// Namespaces entered for a pod session, in this order (user namespace is
/// left alone: pods on k3s share the host's).
const POD_NAMESPACES: &[(&str, libc::c_int)] = &[
    ("ipc", libc::CLONE_NEWIPC),
    ("uts", libc::CLONE_NEWUTS),
    ("net", libc::CLONE_NEWNET),
    ("pid", libc::CLONE_NEWPID),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("mnt", libc::CLONE_NEWNS),
];

/// Errors starting a process.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A system call failed.
    #[error("{op}: {source}")]
    Sys {
        /// What failed.
        op: String,
        /// Cause.
        source: std::io::Error,
    },
}

fn sys(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> SpawnError {
    let op = op.into();
    move |source| SpawnError::Sys { op, source }
}

/// Open handles to a target process' namespaces, taken before forking.
#[derive(Debug)]
pub struct Namespaces {
    fds: Vec<(OwnedFd, libc::c_int)>,
}

impl Namespaces {
    /// Opens the namespaces of process `pid` (those that differ from ours).
    pub fn of_pid(pid: u32) -> Result<Namespaces, SpawnError> {
        let mut fds = Vec::new();
        for (name, flag) in POD_NAMESPACES {
            let theirs = format!("/proc/{pid}/ns/{name}");
            let mine = format!("/proc/self/ns/{name}");
            // Skip namespaces the target shares with us (setns into our own is pointless).
            if let (Ok(a), Ok(b)) = (std::fs::read_link(&theirs), std::fs::read_link(&mine))
                && a == b
            {
                continue;
            }
            let f = File::open(&theirs).map_err(sys(format!("opening {theirs}")))?;
            fds.push((OwnedFd::from(f), *flag));
        }
        Ok(Namespaces { fds })
    }

    /// How many namespaces will be entered.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Whether none will be entered.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }
}

/// A process to start.
#[derive(Debug)]
pub struct Spec<'a> {
    /// Program (the shell, or the sftp server).
    pub program: &'a Path,
    /// Arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Namespaces to enter first.
    pub namespaces: Option<&'a Namespaces>,
}

impl Spec<'_> {
    fn command(&self) -> std::process::Command {
        let mut cmd = std::process::Command::new(self.program);
        cmd.args(&self.args);
        cmd.env_clear();
        cmd.env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
        cmd.env("HOME", "/root");
        cmd.env("SHELL", self.program);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.current_dir("/");
        if let Some(ns) = self.namespaces {
            let targets: Vec<(libc::c_int, libc::c_int)> = ns
                .fds
                .iter()
                .map(|(fd, flag)| (fd.as_raw_fd(), *flag))
                .collect();
            // SAFETY: the closure runs in the forked child before exec and only
            // calls async-signal-safe functions (setns, chdir) on fds that stay
            // open in the parent until spawn returns.
            unsafe {
                cmd.pre_exec(move || {
                    for (fd, flag) in &targets {
                        if libc::setns(*fd, *flag) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                    }
                    if libc::chdir(c"/".as_ptr()) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd
    }
}

/// The process group of a session's program; everything still in it is
/// killed when this is dropped, so a session leaves nothing running.
#[derive(Debug)]
pub struct Group(libc::pid_t);

impl Drop for Group {
    fn drop(&mut self) {
        if self.0 > 0 {
            // SAFETY: kill has no memory effects; a negative pid names the group.
            unsafe {
                libc::kill(-self.0, libc::SIGKILL);
            }
        }
    }
}

fn group_of(child: &tokio::process::Child) -> Group {
    Group(child.id().map(|p| p as libc::pid_t).unwrap_or(0))
}

/// A process with pipes.
#[derive(Debug)]
pub struct Piped {
    /// The child (killed when dropped).
    pub child: tokio::process::Child,
    /// Its process group (killed when dropped).
    pub group: Group,
}

/// Pipe capacity asked for a program's stdin and stdout: 1 MiB, Linux's
/// default `pipe-max-size`, instead of 64 KiB, so sftp-server can queue a
/// few dozen 32 KiB answers (and the agent a few dozen writes) before either
/// side has to wait for the other to be scheduled.
const PIPE_SIZE: libc::c_int = 1024 * 1024;

impl Piped {
    /// Enlarges the stdin and stdout pipes to [`PIPE_SIZE`]. Best effort: a
    /// kernel that refuses (a lower `pipe-max-size`) keeps the default size,
    /// which is slower, not wrong.
    pub fn enlarge_pipes(&self) {
        let fds = [
            self.child.stdin.as_ref().map(AsRawFd::as_raw_fd),
            self.child.stdout.as_ref().map(AsRawFd::as_raw_fd),
        ];
        for fd in fds.into_iter().flatten() {
            // SAFETY: F_SETPIPE_SZ takes an int and touches no memory; the fd
            // is open (owned by the child's pipe handles borrowed above).
            if unsafe { libc::fcntl(fd, libc::F_SETPIPE_SZ, PIPE_SIZE) } < 0 {
                tracing::debug!(error = %std::io::Error::last_os_error(), "F_SETPIPE_SZ refused");
            }
        }
    }
}

/// Starts `spec` with piped stdin/stdout/stderr.
pub fn spawn_piped(spec: &Spec<'_>) -> Result<Piped, SpawnError> {
    let mut cmd = tokio::process::Command::from(spec.command());
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(sys(format!("starting {}", spec.program.display())))?;
    let group = group_of(&child);
    Ok(Piped { child, group })
}

/// A process on a pseudo-terminal.
#[derive(Debug)]
pub struct OnPty {
    /// The child (killed when dropped).
    pub child: tokio::process::Child,
    /// The terminal's master side.
    pub master: OwnedFd,
    /// Its process group (the new session; killed when dropped).
    pub group: Group,
}

/// Sets the terminal size on a pty master.
pub fn resize(master: &OwnedFd, cols: u32, rows: u32) {
    let ws = libc::winsize {
        ws_row: rows.min(u16::MAX as u32) as u16,
        ws_col: cols.min(u16::MAX as u32) as u16,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize from a valid pointer; the fd is open.
    unsafe {
        libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws);
    }
}

/// Starts `spec` as the session leader of a new pseudo-terminal of `cols`x`rows`.
pub fn spawn_pty(spec: &Spec<'_>, cols: u32, rows: u32) -> Result<OnPty, SpawnError> {
    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    // SAFETY: openpty writes two fds into the given pointers; name, termios and
    // winsize may be null.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(sys("openpty")(std::io::Error::last_os_error()));
    }
    // SAFETY: openpty succeeded, so both are fresh fds we now own.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    resize(&master, cols, rows);
    let mut std_cmd = spec.command();
    let dup = |fd: &OwnedFd| fd.try_clone().map_err(sys("dup pty"));
    std_cmd
        .stdin(Stdio::from(dup(&slave)?))
        .stdout(Stdio::from(dup(&slave)?))
        .stderr(Stdio::from(dup(&slave)?));
    // SAFETY: runs in the child before exec; setsid and ioctl are
    // async-signal-safe. Makes the pty (now fd 0) the controlling terminal.
    unsafe {
        std_cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut cmd = tokio::process::Command::from(std_cmd);
    cmd.kill_on_drop(true);
    let child = cmd
        .spawn()
        .map_err(sys(format!("starting {}", spec.program.display())))?;
    drop(slave);
    let group = group_of(&child);
    Ok(OnPty {
        child,
        master,
        group,
    })
}
