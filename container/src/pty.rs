//! A pseudo-terminal from the container's own `/dev/ptmx` (runc's console-socket design): the terminal is one of
//! the container's `/dev/pts` entries, and its master travels back to the agent with `SCM_RIGHTS`.

use crate::resolve;
use dcos_exec_proto::TermSize;
use rustix::fs::OFlags;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Opens a terminal pair from `/dev/ptmx` resolved inside `root`. The slave is the master's own peer
/// (`TIOCGPTPEER`), never a path the container could swap; it belongs to `uid` and keeps the group and mode
/// that the container's devpts gave it (`gid=5,mode=620` in runc's default), as `runc exec` leaves it.
pub fn open(root: BorrowedFd<'_>, uid: u32, size: Option<TermSize>) -> std::io::Result<(OwnedFd, OwnedFd)> {
    let master = resolve::open(root, "/dev/ptmx", OFlags::RDWR)?;
    // A file the container put at /dev/ptmx that is not a terminal multiplexer fails here.
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes one unsigned int to a valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTN, &mut n) } != 0 {
        return Err(std::io::Error::other("the container's /dev/ptmx is not a terminal multiplexer"));
    }
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads one int from a valid pointer.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSPTLCK, &unlock) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: TIOCGPTPEER takes open flags and returns a new fd for the slave, or -1.
    let raw =
        unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the ioctl returned a new fd that nothing else owns.
    let slave = unsafe { OwnedFd::from_raw_fd(raw) };
    nix::unistd::fchown(&slave, Some(uid.into()), None)?;
    if let Some(sz) = size {
        resize(master.as_raw_fd(), sz);
    }
    Ok((master, slave))
}

/// Sets the window size of a terminal.
pub fn resize(fd: RawFd, sz: TermSize) {
    let ws = libc::winsize { ws_row: sz.height, ws_col: sz.width, ws_xpixel: 0, ws_ypixel: 0 };
    // SAFETY: TIOCSWINSZ reads one winsize from a valid pointer; a bad fd only fails the call.
    unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
}

/// Sends one fd over a unix socket.
pub fn send_fd(sock: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> nix::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags, UnixAddr};
    let fds = [fd.as_raw_fd()];
    let iov = [std::io::IoSlice::new(b"m")];
    sendmsg::<UnixAddr>(sock.as_raw_fd(), &iov, &[ControlMessage::ScmRights(&fds)], MsgFlags::empty(), None)?;
    Ok(())
}

/// Receives one fd sent with [`send_fd`].
pub fn recv_fd(sock: BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut buf = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_CMSG_CLOEXEC)
        .map_err(std::io::Error::from)?;
    let mut got = None;
    for c in msg.cmsgs().map_err(std::io::Error::from)? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: the kernel just installed these fds for us; each is owned exactly once.
                let owned = unsafe { OwnedFd::from_raw_fd(fd) };
                got.get_or_insert(owned);
            }
        }
    }
    got.ok_or_else(|| std::io::Error::other("the helper sent no terminal"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_descriptor_survives_the_trip() {
        use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
        let (a, b) = socketpair(AddressFamily::Unix, SockType::Stream, None, SockFlag::SOCK_CLOEXEC).unwrap();
        let f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut &f, b"hello").unwrap();
        send_fd(a.as_fd(), f.as_fd()).unwrap();
        let got = recv_fd(b.as_fd()).unwrap();
        assert_eq!(std::fs::File::from(got).metadata().unwrap().len(), 5);
        drop(a);
        assert!(recv_fd(b.as_fd()).is_err());
    }
}
