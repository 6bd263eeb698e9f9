//! The local terminal: raw mode that is always restored, and its size.

use dcos_exec_proto::TermSize;
use nix::sys::termios::{self, SetArg, Termios};
use std::os::fd::BorrowedFd;

/// Puts stdin's terminal in raw mode until dropped (or `restore` is called).
pub struct RawMode {
    saved: Option<Termios>,
}

fn stdin_fd() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process.
    unsafe { BorrowedFd::borrow_raw(0) }
}

impl RawMode {
    pub fn enter() -> nix::Result<RawMode> {
        let saved = termios::tcgetattr(stdin_fd())?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(stdin_fd(), SetArg::TCSADRAIN, &raw)?;
        Ok(RawMode { saved: Some(saved) })
    }

    pub fn restore(&mut self) {
        if let Some(t) = self.saved.take() {
            let _ = termios::tcsetattr(stdin_fd(), SetArg::TCSADRAIN, &t);
        }
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        self.restore();
    }
}

/// True when `fd` is a terminal.
pub fn is_tty(fd: i32) -> bool {
    // SAFETY: isatty only inspects the fd.
    unsafe { libc::isatty(fd) == 1 }
}

/// The size of the terminal on stdout (or stdin), if any.
pub fn size() -> Option<TermSize> {
    for fd in [1, 0, 2] {
        let mut ws = libc::winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: TIOCGWINSZ writes one winsize into a valid pointer.
        if unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) } == 0 && ws.ws_col > 0 {
            return Some(TermSize { width: ws.ws_col, height: ws.ws_row });
        }
    }
    None
}
