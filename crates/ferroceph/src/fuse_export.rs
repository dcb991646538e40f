//! `ferroceph fuse-export`: exposes one RBD image as one file (`<mountpoint>/image`) through
//! librbd, so that a loop device can be put on top on kernels without rbd or nbd modules.
//!
//! The node plugin starts it as its own process in its own session, so the export outlives
//! a restart of the plugin. The cephx key is read from `--keyfile` or, by default, from
//! standard input (never from the command line or the environment, which other users can
//! read in /proc). Once the file system is mounted the exporter prints `READY <client id>` on standard
//! output (or `ERROR <Code> <message>` if it cannot start) and from then on logs only to
//! standard error.
//!
//! What the file does: reads and writes go to the image; `fsync`/`flush` flush librbd;
//! `fallocate` punch-hole / zero-range make the range read as zeros through librbd
//! (whole objects are discarded); `getattr` reports the image's current size, so a resize
//! by the controller shows up at the next `stat` (the attribute cache TTL is zero); growing
//! the file with `truncate` grows the image, shrinking is refused. SIGTERM, SIGINT and SIGHUP
//! unmount and exit after flushing; while a loop device still holds the file the unmount is
//! retried, then made lazy so open users keep working until they let go.

use crate::duration::parse_duration;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, KernelConfig,
    LockOwner, MountOption, OpenAccMode, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow,
    WriteFlags,
};
use rados::rbd::Image;
use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

// The contract with the attach side (rbd::attach::fuse), which owns it.
pub use crate::rbd::attach::fuse::{EXPORT_FILE, FUSE_SUBTYPE, READY, SUBCOMMAND};

const FILE_INO: u64 = 2;
const MAX_KEY_BYTES: u64 = 4096;
const FALLOC_FL_KEEP_SIZE: i32 = 0x01;
const FALLOC_FL_PUNCH_HOLE: i32 = 0x02;
const FALLOC_FL_ZERO_RANGE: i32 = 0x10;
/// Largest range handed to one librbd zeroing call.
const ZERO_CHUNK: u64 = 1 << 30;
/// Test-only fault switch: while the file this variable names exists, every read of the
/// image fails with EIO, as librbd's reads do once `--timeout` passes while a placement
/// group is inactive (an OSD restarting). When the file says `stall`, reads and `stat`s
/// of the image wait instead until it is removed (a slow cluster: OSD peering). Tests
/// use it to play an outage window.
pub const READ_FAULT_ENV: &str = "FERROCEPH_TEST_READ_FAULT";

/// What the fault switch asks for.
#[derive(PartialEq)]
enum Fault {
    None,
    Eio,
    Stall,
}

#[derive(Debug, Clone, clap::Args)]
pub struct FuseExportArgs {
    /// Monitors, comma separated (host:port).
    #[arg(long)]
    pub monitors: String,
    /// cephx user without `client.`.
    #[arg(long)]
    pub user: String,
    #[arg(long)]
    pub pool: String,
    /// RADOS namespace of the image.
    #[arg(long, default_value = "")]
    pub namespace: String,
    #[arg(long)]
    pub image: String,
    /// Directory to mount the export on; the image appears as `<mountpoint>/image`.
    #[arg(long)]
    pub mountpoint: PathBuf,
    /// Open the image read-only and mount read-only.
    #[arg(long, default_value_t = false)]
    pub read_only: bool,
    /// Read the key from this file instead of standard input.
    #[arg(long)]
    pub keyfile: Option<PathBuf>,
    /// Deadline of connecting and of each Ceph operation.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Threads serving FUSE requests.
    #[arg(long, default_value_t = 4)]
    pub threads: usize,
}

/// Runs the exporter; returns the process exit code.
pub fn run(args: FuseExportArgs) -> i32 {
    // Signals are taken by one thread with sigwait; block them before any other thread
    // (librados starts many) exists, so every thread inherits the mask.
    let signals = {
        use nix::sys::signal::{SigSet, Signal};
        let mut s = SigSet::empty();
        s.add(Signal::SIGTERM);
        s.add(Signal::SIGINT);
        s.add(Signal::SIGHUP);
        s
    };
    if let Err(e) = signals.thread_block() {
        return fail("Internal", &format!("cannot block signals: {e}"));
    }
    // Our own session: no controlling terminal, not in the plugin's process group.
    let _ = nix::unistd::setsid();

    let key = match read_key(args.keyfile.as_deref()) {
        Ok(k) => k,
        Err(e) => return fail("InvalidArgument", &e),
    };
    let cfg = connect_config(&args, key);
    let what = image_label(&args);
    let (image, client_id) = match open_image(&cfg, &args) {
        Ok(i) => i,
        Err(e) => return fail(code_of(&e), &e.to_string()),
    };
    drop(cfg);
    let size = match image.size() {
        Ok(s) => s,
        Err(e) => return fail(code_of(&e), &e.to_string()),
    };

    if let Err(e) = std::fs::create_dir_all(&args.mountpoint) {
        return fail(
            "Internal",
            &format!("cannot create {}: {e}", args.mountpoint.display()),
        );
    }
    let fs = RbdFile {
        image,
        read_only: args.read_only,
        size: AtomicU64::new(size),
        created: SystemTime::now(),
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        read_fault: std::env::var_os(READ_FAULT_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
    };
    let session = match fuser::Session::new(fs, &args.mountpoint, &mount_config(&args, &what)) {
        Ok(s) => s,
        Err(e) => {
            return fail(
                "Internal",
                &format!("cannot mount FUSE on {}: {e}", args.mountpoint.display()),
            )
        }
    };

    if let Err(e) = spawn_signal_thread(signals, args.mountpoint.clone()) {
        return fail("Internal", &format!("cannot start the signal thread: {e}"));
    }

    tracing::info!(image = %what, size, read_only = args.read_only, mountpoint = %args.mountpoint.display(), "serving");
    announce_ready(client_id);

    match session.run() {
        Ok(()) => {
            tracing::info!("unmounted; exiting");
            0
        }
        Err(e) => {
            tracing::error!("FUSE session ended with an error: {e}");
            1
        }
    }
}

/// The cluster connection the arguments describe.
fn connect_config(args: &FuseExportArgs, key: String) -> rados::ConnectConfig {
    rados::ConnectConfig::new(
        args.monitors
            .split(',')
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .collect::<Vec<_>>(),
        args.user.clone(),
        key,
    )
    .with_timeout(args.timeout)
}

/// `pool/image` or `pool/namespace/image`, for the mount's source and the logs.
fn image_label(args: &FuseExportArgs) -> String {
    if args.namespace.is_empty() {
        format!("{}/{}", args.pool, args.image)
    } else {
        format!("{}/{}/{}", args.pool, args.namespace, args.image)
    }
}

/// Mount options and worker threads of the FUSE session.
fn mount_config(args: &FuseExportArgs, what: &str) -> fuser::Config {
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("ferroceph:{what}")),
        MountOption::Subtype(FUSE_SUBTYPE.to_string()),
        MountOption::NoSuid,
        MountOption::NoDev,
        MountOption::NoExec,
        if args.read_only {
            MountOption::RO
        } else {
            MountOption::RW
        },
    ];
    config.n_threads = Some(args.threads.clamp(1, 64));
    config
}

/// A thread that waits for SIGTERM, SIGINT or SIGHUP (blocked in every thread) and then
/// unmounts `dir`, which ends the FUSE session.
fn spawn_signal_thread(signals: nix::sys::signal::SigSet, dir: PathBuf) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Ok(sig) = signals.wait() {
                tracing::info!(signal = %sig, "stopping: unmounting {}", dir.display());
                unmount_patiently(&dir);
            }
        })
        .map(|_| ())
}

/// Tells the plugin the mount is up (READY and the client id on stdout), then points
/// stdout at /dev/null.
fn announce_ready(client_id: u64) {
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{READY} {client_id}");
        let _ = out.flush();
    }
    // The plugin stops reading after READY (and may exit): nothing more goes to stdout.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
}

fn fail(code: &str, msg: &str) -> i32 {
    tracing::error!("{msg}");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ERROR {code} {}", msg.replace('\n', " "));
    let _ = out.flush();
    1
}

fn code_of(e: &rados::Error) -> &'static str {
    match e.kind() {
        rados::ErrorKind::NotFound => "NotFound",
        rados::ErrorKind::PermissionDenied => "PermissionDenied",
        rados::ErrorKind::TimedOut => "Unavailable",
        rados::ErrorKind::InvalidArgument => "InvalidArgument",
        rados::ErrorKind::Busy => "FailedPrecondition",
        _ => "Internal",
    }
}

fn read_key(keyfile: Option<&Path>) -> Result<String, String> {
    let mut key = String::new();
    match keyfile {
        Some(p) => std::fs::File::open(p)
            .and_then(|f| f.take(MAX_KEY_BYTES).read_to_string(&mut key))
            .map_err(|e| format!("cannot read the key file {}: {e}", p.display()))?,
        None => std::io::stdin()
            .lock()
            .take(MAX_KEY_BYTES)
            .read_to_string(&mut key)
            .map_err(|e| format!("cannot read the key from standard input: {e}"))?,
    };
    let key = key.trim().to_string();
    if key.is_empty() {
        return Err("no key given (standard input or --keyfile)".into());
    }
    Ok(key)
}

/// Opens the image; returns it with this client's global id.
fn open_image(cfg: &rados::ConnectConfig, args: &FuseExportArgs) -> rados::Result<(Image, u64)> {
    let cluster = rados::Cluster::connect(cfg)?;
    let io = cluster.ioctx(&args.pool, &args.namespace)?;
    let image = if args.read_only {
        Image::open_read_only(&io, &args.image)
    } else {
        Image::open(&io, &args.image)
    }?;
    Ok((image, cluster.instance_id()))
}

/// Unmounts `dir`; while it is busy (a loop device still holds the file) retries for a
/// while, then detaches lazily so the export ends when the last user lets go.
fn unmount_patiently(dir: &Path) {
    use nix::mount::{umount2, MntFlags};
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        match umount2(dir, MntFlags::empty()) {
            Ok(()) => return,
            Err(nix::errno::Errno::EBUSY) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => return,
            Err(e) => {
                tracing::warn!("unmount {}: {e}; detaching lazily", dir.display());
                let _ = umount2(dir, MntFlags::MNT_DETACH);
                return;
            }
        }
    }
}

struct RbdFile {
    image: Image,
    read_only: bool,
    /// Last size seen, served when librbd cannot be asked.
    size: AtomicU64,
    created: SystemTime,
    uid: u32,
    gid: u32,
    /// See [`READ_FAULT_ENV`].
    read_fault: Option<PathBuf>,
}

fn io_errno(e: &rados::Error) -> Errno {
    let io = e.to_io_error();
    match io.raw_os_error() {
        Some(n) if n > 0 => Errno::from_i32(n),
        _ => Errno::EIO,
    }
}

impl RbdFile {
    fn fault(&self) -> Fault {
        let Some(p) = &self.read_fault else {
            return Fault::None;
        };
        match std::fs::read_to_string(p) {
            Err(_) => Fault::None,
            Ok(s) if s.trim() == "stall" => Fault::Stall,
            Ok(_) => Fault::Eio,
        }
    }

    /// Waits while the fault switch says `stall`; returns the fault after that.
    fn stall_if_asked(&self) -> Fault {
        loop {
            match self.fault() {
                Fault::Stall => std::thread::sleep(Duration::from_millis(100)),
                f => return f,
            }
        }
    }

    /// The image's current size; librbd refreshes it when the header changed (a resize
    /// by another client notifies every watcher).
    fn current_size(&self) -> u64 {
        match self.image.size() {
            Ok(s) => {
                self.size.store(s, Ordering::Relaxed);
                s
            }
            Err(e) => {
                tracing::warn!("{e}");
                self.size.load(Ordering::Relaxed)
            }
        }
    }

    fn attr(&self, ino: u64) -> Option<FileAttr> {
        if ino == FILE_INO {
            self.stall_if_asked();
        }
        let (kind, perm, size, nlink) = match ino {
            1 => (FileType::Directory, 0o700, 0, 2),
            FILE_INO => (
                FileType::RegularFile,
                if self.read_only { 0o400 } else { 0o600 },
                self.current_size(),
                1,
            ),
            _ => return None,
        };
        Some(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: self.created,
            mtime: self.created,
            ctime: self.created,
            crtime: self.created,
            kind,
            perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        })
    }

    /// Makes `[offset, offset+len)` (clipped to the image) read as zeros.
    fn zero(&self, offset: u64, len: u64) -> Result<(), Errno> {
        let size = self.current_size();
        let end = offset.saturating_add(len).min(size);
        let mut at = offset;
        while at < end {
            let n = (end - at).min(ZERO_CHUNK);
            let n = usize::try_from(n).map_err(|_| Errno::EINVAL)?;
            self.image.write_zeroes(at, n).map_err(|e| {
                tracing::warn!("{e}");
                io_errno(&e)
            })?;
            at += n as u64;
        }
        Ok(())
    }
}

/// Attributes are never cached: the size must follow resizes.
const NO_CACHE: Duration = Duration::ZERO;

impl Filesystem for RbdFile {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        Ok(())
    }

    fn destroy(&mut self) {
        if let Err(e) = self.image.flush() {
            tracing::error!("final flush failed: {e}");
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 != 1 || name != OsStr::new(EXPORT_FILE) {
            reply.error(Errno::ENOENT);
            return;
        }
        match self.attr(FILE_INO) {
            Some(a) => reply.entry(&NO_CACHE, &a, fuser::Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr(ino.0) {
            Some(a) => reply.attr(&NO_CACHE, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if ino.0 != FILE_INO || mode.is_some() || uid.is_some() || gid.is_some() {
            reply.error(Errno::EPERM);
            return;
        }
        if let Some(want) = size {
            let cur = self.current_size();
            if want != cur {
                if self.read_only {
                    reply.error(Errno::EROFS);
                    return;
                }
                if want < cur {
                    tracing::warn!(from = cur, to = want, "refusing to shrink the image");
                    reply.error(Errno::EPERM);
                    return;
                }
                if let Err(e) = self.image.resize(want) {
                    tracing::warn!("{e}");
                    reply.error(io_errno(&e));
                    return;
                }
                tracing::info!(from = cur, to = want, "image grown");
            }
        }
        match self.attr(FILE_INO) {
            Some(a) => reply.attr(&NO_CACHE, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 != FILE_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        if self.read_only && flags.acc_mode() != OpenAccMode::O_RDONLY {
            reply.error(Errno::EROFS);
            return;
        }
        // No page cache in front of the image: every read and write reaches librbd, and
        // direct writes to different ranges may run in parallel.
        reply.opened(
            FileHandle(0),
            FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES,
        );
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino.0 != FILE_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        if self.stall_if_asked() == Fault::Eio {
            reply.error(Errno::EIO);
            return;
        }
        let end = self.size.load(Ordering::Relaxed);
        let end = if offset.saturating_add(u64::from(size)) > end {
            self.current_size()
        } else {
            end
        };
        if offset >= end {
            reply.data(&[]);
            return;
        }
        let len = (end - offset).min(u64::from(size)) as usize;
        let mut buf = vec![0u8; len];
        let mut done = 0;
        while done < len {
            match self.image.read(offset + done as u64, &mut buf[done..]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) => {
                    tracing::warn!("{e}");
                    reply.error(io_errno(&e));
                    return;
                }
            }
        }
        reply.data(&buf[..done]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino.0 != FILE_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        if self.read_only {
            reply.error(Errno::EROFS);
            return;
        }
        let mut end = self.size.load(Ordering::Relaxed);
        if offset.saturating_add(data.len() as u64) > end {
            end = self.current_size();
        }
        if offset >= end {
            reply.error(Errno::ENOSPC);
            return;
        }
        let len = (end - offset).min(data.len() as u64) as usize;
        let mut done = 0;
        while done < len {
            match self.image.write(offset + done as u64, &data[done..len]) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) => {
                    tracing::warn!("{e}");
                    reply.error(io_errno(&e));
                    return;
                }
            }
        }
        reply.written(u32::try_from(done).unwrap_or(u32::MAX));
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        if self.read_only {
            reply.ok();
            return;
        }
        match self.image.flush() {
            Ok(()) => reply.ok(),
            Err(e) => {
                tracing::warn!("{e}");
                reply.error(io_errno(&e));
            }
        }
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        if self.read_only {
            reply.ok();
            return;
        }
        match self.image.flush() {
            Ok(()) => reply.ok(),
            Err(e) => {
                tracing::warn!("{e}");
                reply.error(io_errno(&e));
            }
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if ino.0 != FILE_INO {
            reply.error(Errno::EISDIR);
            return;
        }
        if self.read_only {
            reply.error(Errno::EROFS);
            return;
        }
        let zeroing = mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE) != 0;
        let known = FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE;
        if mode & !known != 0 {
            reply.error(Errno::EOPNOTSUPP);
            return;
        }
        if zeroing {
            match self.zero(offset, length) {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(e),
            }
            return;
        }
        // Plain allocation: the image is thin, every byte inside it already exists.
        if offset.saturating_add(length) <= self.current_size() || mode & FALLOC_FL_KEEP_SIZE != 0 {
            reply.ok();
        } else {
            reply.error(Errno::EOPNOTSUPP);
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == 1 {
            reply.opened(FileHandle(0), FopenFlags::empty());
        } else {
            reply.error(Errno::ENOTDIR);
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino.0 != 1 {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let entries = [
            (1, FileType::Directory, "."),
            (1, FileType::Directory, ".."),
            (FILE_INO, FileType::RegularFile, EXPORT_FILE),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        reply.error(Errno::NO_XATTR);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: ReplyXattr) {
        reply.size(0);
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let blocks = self.current_size() / 4096;
        reply.statfs(blocks, 0, 0, 2, 0, 4096, 255, 4096);
    }
}
