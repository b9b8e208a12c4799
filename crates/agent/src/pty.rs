//! Pseudo-terminals for the web terminal and SSH sessions.
//!
//! [`Pty::spawn`] opens a PTY pair, starts a command on its slave side as the leader of a
//! new session with the PTY as its controlling terminal (so job control, Ctrl-C and
//! `SIGWINCH` work as in any terminal), and hands back the master side as an async byte
//! stream that can be split into a reader and a writer (both are cheap clones).
//!
//! The only unsafe code of the agent lives here: `pre_exec` (to call `setsid` and
//! `TIOCSCTTY` between fork and exec), the `TIOCSWINSZ` ioctl, and registering the master
//! descriptor with tokio's reactor.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::pty::{openpty, Winsize};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A terminal size in character cells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size {
    pub cols: u16,
    pub rows: u16,
}

impl Default for Size {
    fn default() -> Self {
        Self { cols: 80, rows: 24 }
    }
}

impl Size {
    fn winsize(self) -> Winsize {
        Winsize { ws_row: self.rows.max(1), ws_col: self.cols.max(1), ws_xpixel: 0, ws_ypixel: 0 }
    }
}

nix::ioctl_write_ptr_bad!(set_winsize, nix::libc::TIOCSWINSZ, Winsize);

/// The master side of a PTY: read what the program writes, write what the user types.
/// Clones share the same descriptor.
#[derive(Clone)]
pub struct Master {
    fd: Arc<AsyncFd<OwnedFd>>,
}

/// A program running on a PTY.
pub struct Pty {
    pub master: Master,
    pub child: tokio::process::Child,
}

impl Pty {
    /// Starts `command` (set up with its user, environment and directory, e.g. by
    /// `WorkspaceUser::command`) on a new PTY of `size`. `TERM` is set unless given.
    pub fn spawn(mut command: tokio::process::Command, size: Size) -> io::Result<Pty> {
        let pair = openpty(Some(&size.winsize()), None).map_err(io::Error::from)?;
        let slave: OwnedFd = pair.slave;
        let master: OwnedFd = pair.master;
        command
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave));
        if !command.as_std().get_envs().any(|(k, _)| k == "TERM") {
            command.env("TERM", "xterm-256color");
        }
        // SAFETY: the closure runs in the child between fork and exec and only makes
        // async-signal-safe syscalls (setsid, ioctl) on the child's own stdin, which std has
        // already pointed at the PTY's slave side.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(|| {
                nix::unistd::setsid().map_err(io::Error::from)?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY as _, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn()?;
        let flags = fcntl(&master, FcntlArg::F_GETFL).map_err(io::Error::from)?;
        fcntl(&master, FcntlArg::F_SETFL(OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK))
            .map_err(io::Error::from)?;
        // SAFETY: `master` is an open descriptor owned by the `AsyncFd` from here on; an
        // `OwnedFd` always returns the same descriptor and closes it only when dropped.
        #[allow(unsafe_code)]
        let fd = unsafe { AsyncFd::register(master) }.map_err(io::Error::from)?;
        Ok(Pty { master: Master { fd: Arc::new(fd) }, child })
    }
}

impl Master {
    /// Tells the program its terminal changed size (it gets `SIGWINCH`).
    pub fn resize(&self, size: Size) -> io::Result<()> {
        let winsize = size.winsize();
        // SAFETY: TIOCSWINSZ reads one `Winsize` from the pointer, which outlives the call;
        // the descriptor is a PTY master we own.
        #[allow(unsafe_code)]
        unsafe {
            set_winsize(self.fd.get_ref().as_raw_fd(), &winsize).map_err(io::Error::from)?;
        }
        Ok(())
    }
}

impl AsyncRead for Master {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            let mut guard = ready!(self.fd.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref().as_fd(), unfilled).map_err(io::Error::from)) {
                Ok(Ok(n)) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // Linux answers EIO once the last process holding the slave side is gone:
                // for a reader that is the end of the output.
                Ok(Err(e)) if e.raw_os_error() == Some(nix::libc::EIO) => return Poll::Ready(Ok(())),
                Ok(Err(e)) => return Poll::Ready(Err(e)),
                Err(_would_block) => continue,
            }
        }
    }
}

impl AsyncWrite for Master {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            let mut guard = ready!(self.fd.poll_write_ready(cx))?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from)) {
                Ok(result) => return Poll::Ready(result),
                Err(_would_block) => continue,
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn read_until(master: &mut Master, needle: &str) -> String {
        let mut seen = Vec::new();
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&seen).contains(needle) {
            let n = tokio::time::timeout_at(deadline, master.read(&mut buf))
                .await
                .unwrap_or_else(|_| panic!("no {needle:?} in {:?}", String::from_utf8_lossy(&seen)))
                .unwrap();
            assert!(n > 0, "eof before {needle:?}: {:?}", String::from_utf8_lossy(&seen));
            seen.extend_from_slice(&buf[..n]);
        }
        String::from_utf8_lossy(&seen).into_owned()
    }

    #[tokio::test]
    async fn a_shell_on_a_pty_sees_a_terminal_its_size_and_utf8() {
        let mut command = tokio::process::Command::new("/bin/sh");
        command.env("PS1", "$ ").env("LANG", "C.UTF-8");
        let mut pty = Pty::spawn(command, Size { cols: 100, rows: 30 }).unwrap();
        let mut master = pty.master.clone();
        master.write_all(b"test -t 0 && echo is-a-''tty; stty size\n").await.unwrap();
        let out = read_until(&mut master, "30 100").await;
        assert!(out.contains("is-a-tty"), "{out}");
        pty.master.resize(Size { cols: 132, rows: 40 }).unwrap();
        // Octal escapes in, UTF-8 out: the echo of the typed line must not match.
        master.write_all(b"stty size; printf 'h\\303\\251llo \\342\\234\\223\\n'\n").await.unwrap();
        let out = read_until(&mut master, "héllo ✓").await;
        assert!(out.contains("40 132"), "{out}");
        master.write_all(b"exit 7\n").await.unwrap();
        let status = tokio::time::timeout(std::time::Duration::from_secs(10), pty.child.wait()).await.unwrap().unwrap();
        assert_eq!(status.code(), Some(7));
    }
}
