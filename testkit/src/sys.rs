//! Small wrappers around the libc calls the crate needs. Every `unsafe` block is local and
//! explained; callers only see safe functions taking `BorrowedFd` / `OwnedFd`.

use std::ffi::CString;
use std::io;
use std::mem::{MaybeUninit, size_of};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Duration;

/// `linux/if_packet.h` (kernel ABI; defined here so we do not depend on how a given libc
/// release spells them).
pub const SOL_PACKET: libc::c_int = 263;
pub const PACKET_STATISTICS: libc::c_int = 6;
pub const PACKET_IGNORE_OUTGOING: libc::c_int = 23;
pub const PACKET_OUTGOING: u8 = 4;

/// `struct tpacket_stats` from `linux/if_packet.h`.
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
pub struct TpacketStats {
    pub tp_packets: libc::c_uint,
    pub tp_drops: libc::c_uint,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn cvt_size(ret: libc::ssize_t) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

/// `socket(2)` with `SOCK_CLOEXEC`.
pub fn socket(domain: libc::c_int, ty: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall without pointer arguments.
    let fd = cvt(unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) })?;
    // SAFETY: `fd` was just returned by socket(2), is valid and owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `setsockopt(2)` with a value of type `T` (a plain C struct or integer).
pub fn setsockopt<T: Copy>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
    value: T,
) -> io::Result<()> {
    // SAFETY: the pointer and length describe `value`, which lives for the whole call.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// `getsockopt(2)` into a value of type `T` (a plain C struct or integer, all-zero valid).
pub fn getsockopt<T: Copy + Default>(
    fd: BorrowedFd<'_>,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<T> {
    let mut value = T::default();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: the pointer and length describe `value`, which is writable for the whole call;
    // the kernel writes at most `len` bytes.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw mut value).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// Sets a large receive buffer, ignoring the `rmem_max` limit (we are root); falls back to
/// the capped `SO_RCVBUF` if `SO_RCVBUFFORCE` is refused.
pub fn set_rcvbuf(fd: BorrowedFd<'_>, bytes: libc::c_int) -> io::Result<()> {
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes)
        .or_else(|_| setsockopt(fd, libc::SOL_SOCKET, libc::SO_RCVBUF, bytes))
}

/// `SO_RCVTIMEO` / `SO_SNDTIMEO` (`opt`), at least 1 ms (0 would mean "forever").
pub fn set_timeout(fd: BorrowedFd<'_>, opt: libc::c_int, d: Duration) -> io::Result<()> {
    let d = d.max(Duration::from_millis(1));
    let tv = libc::timeval {
        tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    };
    setsockopt(fd, libc::SOL_SOCKET, opt, tv)
}

/// A `sockaddr_in` / `sockaddr_in6` for `addr`.
pub fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid (AF_UNSPEC) value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and suitably aligned for sockaddr_in6.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// Decodes an AF_INET / AF_INET6 `sockaddr_storage` filled in by the kernel.
pub fn from_sockaddr(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in; alignment is fine.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6; alignment is fine.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

pub fn bind(fd: BorrowedFd<'_>, addr: SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes for the whole call.
    cvt(unsafe { libc::bind(fd.as_raw_fd(), (&raw const storage).cast(), len) })?;
    Ok(())
}

pub fn connect(fd: BorrowedFd<'_>, addr: SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: `storage` holds a valid sockaddr of `len` bytes for the whole call.
    cvt(unsafe { libc::connect(fd.as_raw_fd(), (&raw const storage).cast(), len) })?;
    Ok(())
}

pub fn sendto(fd: BorrowedFd<'_>, buf: &[u8], addr: SocketAddr) -> io::Result<usize> {
    let (storage, len) = sockaddr(addr);
    // SAFETY: `buf` is readable for `buf.len()` bytes and `storage` holds a valid sockaddr
    // of `len` bytes, both for the whole call.
    cvt_size(unsafe {
        libc::sendto(
            fd.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            0,
            (&raw const storage).cast(),
            len,
        )
    })
}

/// `recvfrom(2)` returning the length reported by the kernel (which, with `MSG_TRUNC` on a
/// packet socket, is the real frame length even if larger than `buf`) and the peer address.
pub fn recvfrom<A: Copy>(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: libc::c_int,
) -> io::Result<(usize, A)> {
    let mut addr = MaybeUninit::<A>::zeroed();
    let mut len = size_of::<A>() as libc::socklen_t;
    // SAFETY: `buf` is writable for `buf.len()` bytes and `addr` for `len` bytes; the kernel
    // writes no more than that.
    let n = cvt_size(unsafe {
        libc::recvfrom(
            fd.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            flags,
            addr.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    // SAFETY: `addr` was zero-initialised (valid for the plain C address structs used as
    // `A`) and possibly overwritten by the kernel with a valid address.
    Ok((n, unsafe { addr.assume_init() }))
}

/// Waits up to `timeout` for `fd` to become readable; Ok(false) on timeout.
pub fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: `pfd` is one valid pollfd for the whole call.
    match cvt(unsafe { libc::poll(&mut pfd, 1, ms) }) {
        Ok(n) => Ok(n > 0),
        Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(false),
        Err(e) => Err(e),
    }
}

/// `if_nametoindex(3)` in the calling thread's network namespace.
pub fn if_nametoindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a valid NUL-terminated string for the whole call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(idx)
    }
}

/// Moves the calling thread into the network namespace referred to by `fd`.
pub fn setns_net(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: plain syscall on a valid fd; it only changes the calling thread's namespace.
    cvt(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) })?;
    Ok(())
}
