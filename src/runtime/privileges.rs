//! Running as an unprivileged user: names looked up when the configuration is
//! read, the switch made once every socket is bound and every file opened.

use std::ffi::{CStr, CString};

use crate::config::RunAs;

/// The uid and primary gid of a user.
pub fn lookup_user(name: &str) -> Result<(u32, u32), String> {
    let c = CString::new(name).map_err(|_| format!("`{name}` is not a user name"))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: passwd is plain data; getpwnam_r writes into it and into buf, whose length is passed.
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if rc != 0 {
        return Err(format!(
            "cannot look up user `{name}`: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    if out.is_null() {
        return Err(format!("user `{name}` does not exist on this host"));
    }
    Ok((pw.pw_uid, pw.pw_gid))
}

/// The gid of a group.
pub fn lookup_group(name: &str) -> Result<u32, String> {
    let c = CString::new(name).map_err(|_| format!("`{name}` is not a group name"))?;
    let mut buf = vec![0u8; 64 * 1024];
    // SAFETY: as in lookup_user, for struct group.
    let mut gr: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    let rc = unsafe { libc::getgrnam_r(c.as_ptr(), &mut gr, buf.as_mut_ptr().cast(), buf.len(), &mut out) };
    if rc != 0 {
        return Err(format!(
            "cannot look up group `{name}`: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    if out.is_null() {
        return Err(format!("group `{name}` does not exist on this host"));
    }
    Ok(gr.gr_gid)
}

fn errno() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Becomes `to` (supplementary groups cleared, then gid, then uid) for every
/// thread of the process, and proves root cannot be regained. Any failure is
/// an error: the caller must not go on serving as root.
pub fn drop_to(to: &RunAs) -> Result<(), String> {
    // SAFETY: plain libc calls without pointers, or with a valid one-element array.
    let (uid, euid, egid) = unsafe { (libc::getuid(), libc::geteuid(), libc::getegid()) };
    if euid != 0 {
        if uid == to.uid && euid == to.uid && egid == to.gid {
            return Ok(());
        }
        return Err(format!(
            "cannot switch to user `{}` (uid {}, gid {}): not running as root (uid {euid}, gid {egid})",
            to.user, to.uid, to.gid
        ));
    }
    let fail = |what: &str| format!("cannot switch to user `{}`: {what} failed: {}", to.user, errno());
    unsafe {
        let groups = [to.gid as libc::gid_t];
        if libc::setgroups(1, groups.as_ptr()) != 0 {
            return Err(fail("setgroups"));
        }
        if libc::setgid(to.gid) != 0 {
            return Err(fail("setgid"));
        }
        if libc::setuid(to.uid) != 0 {
            return Err(fail("setuid"));
        }
        if libc::getuid() != to.uid || libc::geteuid() != to.uid || libc::getegid() != to.gid {
            return Err(format!("cannot switch to user `{}`: ids did not change", to.user));
        }
        if to.uid != 0 && libc::setuid(0) == 0 {
            return Err(format!(
                "switched to user `{}` but root could be regained; refusing to run",
                to.user
            ));
        }
    }
    Ok(())
}

/// The name of the user the process runs as, for log lines.
pub fn current_user() -> String {
    // SAFETY: getpwuid returns a pointer into static storage or null.
    unsafe {
        let pw = libc::getpwuid(libc::geteuid());
        if pw.is_null() {
            return format!("uid {}", libc::geteuid());
        }
        CStr::from_ptr((*pw).pw_name).to_string_lossy().into_owned()
    }
}
