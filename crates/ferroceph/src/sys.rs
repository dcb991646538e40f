//! The crate's only `unsafe` code: libc calls the standard library does not wrap. Everything
//! else in the crate is compiled with `deny(unsafe_code)`.
#![allow(unsafe_code)]

/// glibc gives threads that allocate concurrently their own malloc arenas (up to eight per
/// core); librados and librbd run many threads, so a burst of requests spreads small
/// allocations over many mostly-empty heaps that stay resident. Two arenas do the same work
/// with a fraction of the memory. Call before any other thread exists.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Makes a child started with `cmd` a long-lived attachment process: setsid() puts it in its
/// own session (and process group) so it outlives the plugin and no signal for the plugin's
/// group reaches it; close_range(CLOEXEC) keeps descriptors the plugin inherited (locks,
/// pipes of whoever started it) from living on in it. Marking instead of closing keeps the
/// pipe that reports a failed exec; kernels without the flag leave the descriptors as they
/// are.
pub(crate) fn detach_at_exec(cmd: &mut tokio::process::Command) {
    // SAFETY: the closure runs in the forked child before exec and only makes two
    // async-signal-safe system calls.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::close_range(
                3,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
            );
            Ok(())
        });
    }
}
