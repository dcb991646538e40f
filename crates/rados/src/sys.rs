//! Hand-written FFI to librados and librbd (Ceph 16.2 "pacific" headers), plus
//! small safe wrappers around it.
//!
//! This is the only module of the crate that contains `unsafe` code. Every
//! `extern` declaration below was checked against `/usr/include/rados/librados.h`
//! and `/usr/include/rbd/librbd.h`; only the functions the crate uses are
//! declared. The rest of the crate talks to Ceph exclusively through the safe
//! types and functions exported from here, which:
//!
//! * own every raw handle in an RAII type that frees it exactly once
//!   ([`Rados`], [`Ioctx`], [`Image`], plus private guards for ops,
//!   iterators and option sets);
//! * keep the cluster handle alive (through an `Arc<Rados>`) for as long as any
//!   io context or image opened from it exists, so `rados_shutdown` can never
//!   run while a dependent handle is still in use;
//! * never loop forever when growing buffers after `-ERANGE` (every loop has a
//!   hard iteration/size cap);
//! * report failures as a positive `errno` (`Err(i32)`); the callers attach
//!   operation and context to turn that into a [`crate::Error`].
#![allow(unsafe_code)]
#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr;
use std::sync::Arc;

use libc::{size_t, ssize_t, time_t};

/// Result of a raw call: the error is a positive errno.
pub(crate) type SysResult<T> = Result<T, i32>;

/// Raw omap entries (key, value).
pub(crate) type OmapEntries = Vec<(Vec<u8>, Vec<u8>)>;

// ---------------------------------------------------------------------------
// Raw types
// ---------------------------------------------------------------------------

type rados_t = *mut c_void;
type rados_ioctx_t = *mut c_void;
type rados_omap_iter_t = *mut c_void;
type rados_write_op_t = *mut c_void;
type rados_read_op_t = *mut c_void;
type rados_completion_t = *mut c_void;
type rbd_image_t = *mut c_void;
type rbd_image_options_t = *mut c_void;

const RBD_MAX_BLOCK_NAME_SIZE: usize = 24;
const RBD_MAX_IMAGE_NAME_SIZE: usize = 96;

/// `rbd_image_info_t` (160 bytes on x86_64/aarch64 LP64).
#[repr(C)]
struct rbd_image_info_t {
    size: u64,
    obj_size: u64,
    num_objs: u64,
    order: c_int,
    block_name_prefix: [c_char; RBD_MAX_BLOCK_NAME_SIZE],
    parent_pool: i64,
    parent_name: [c_char; RBD_MAX_IMAGE_NAME_SIZE],
}

/// `rbd_image_spec_t`
#[repr(C)]
struct rbd_image_spec_t {
    id: *mut c_char,
    name: *mut c_char,
}

/// `rbd_trash_image_info_t`
#[repr(C)]
struct rbd_trash_image_info_t {
    id: *mut c_char,
    name: *mut c_char,
    source: c_int,
    deletion_time: libc::time_t,
    deferment_end_time: libc::time_t,
}

/// `rbd_linked_image_spec_t`
#[repr(C)]
struct rbd_linked_image_spec_t {
    pool_id: i64,
    pool_name: *mut c_char,
    pool_namespace: *mut c_char,
    image_id: *mut c_char,
    image_name: *mut c_char,
    trash: bool,
}

/// `rbd_snap_spec_t`; `namespace_type` is the C enum
/// `rbd_snap_namespace_type_t`, which is `int`-sized.
#[repr(C)]
struct rbd_snap_spec_t {
    id: u64,
    namespace_type: c_int,
    name: *mut c_char,
}

/// `rbd_snap_info_t`
#[repr(C)]
struct rbd_snap_info_t {
    id: u64,
    size: u64,
    name: *const c_char,
}

/// `rbd_image_watcher_t`
#[repr(C)]
struct rbd_image_watcher_t {
    addr: *mut c_char,
    id: i64,
    cookie: u64,
}

// Image option names (enum in librbd.h).
pub(crate) const RBD_IMAGE_OPTION_FORMAT: c_int = 0;
pub(crate) const RBD_IMAGE_OPTION_FEATURES: c_int = 1;
const RBD_SNAP_CREATE_SKIP_QUIESCE: u32 = 1;
const LIBRADOS_CMPXATTR_OP_EQ: u8 = 1;
pub(crate) const RBD_IMAGE_OPTION_ORDER: c_int = 2;
pub(crate) const RBD_IMAGE_OPTION_STRIPE_UNIT: c_int = 3;
pub(crate) const RBD_IMAGE_OPTION_STRIPE_COUNT: c_int = 4;
pub(crate) const RBD_IMAGE_OPTION_DATA_POOL: c_int = 10;
pub(crate) const RBD_IMAGE_OPTION_CLONE_FORMAT: c_int = 12;

// The libraries are opened on first use (`dlopen`), not linked: a process that never talks
// to Ceph — an idle node plugin, the `client` subcommand — then never maps librados, librbd
// and libceph-common, whose pages are most of a linked binary's resident memory.
macro_rules! ceph_api {
    ($(
        lib $lib:ident = $soname:literal;
        $( fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?; )*
    )*) => {
        /// Entry points resolved from the Ceph client libraries.
        struct Api {
            $($( $name: unsafe extern "C" fn($($ty),*) $(-> $ret)?, )*)*
        }

        fn load_api() -> Result<Api, String> {
            $(
                let $lib = open_library($soname)?;
            )*
            // SAFETY: each symbol is looked up in the library that defines it and cast to
            // the signature declared for it above (checked against the installed headers).
            unsafe {
                Ok(Api {
                    $($( $name: std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($ty),*) $(-> $ret)?>(
                        symbol($lib, $soname, concat!(stringify!($name), "\0"))?,
                    ), )*)*
                })
            }
        }

        $($(
            #[allow(clippy::too_many_arguments)]
            unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
                (api().$name)($($arg),*)
            }
        )*)*
    };
}

static API: std::sync::OnceLock<Result<Api, String>> = std::sync::OnceLock::new();

/// Opens librados and librbd once; the error says which library or symbol is missing.
pub(crate) fn load() -> Result<(), String> {
    match API.get_or_init(load_api) {
        Ok(_) => Ok(()),
        Err(e) => Err(e.clone()),
    }
}

fn api() -> &'static Api {
    match API.get_or_init(load_api) {
        Ok(api) => api,
        // Unreachable in practice: every handle starts from `Rados::create`, which calls
        // `load` and fails cleanly when the libraries are missing.
        Err(e) => panic!("Ceph client libraries unavailable: {e}"),
    }
}

fn open_library(soname: &str) -> Result<*mut c_void, String> {
    let name = cstr(soname).map_err(|_| format!("bad library name {soname}"))?;
    // SAFETY: a valid C string; the handle is never closed (librados does not support
    // being unloaded), so symbols stay valid for the life of the process.
    let h = unsafe { libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
    if h.is_null() {
        return Err(format!(
            "cannot load {soname} ({}); install the Ceph client libraries (Debian: librados2, librbd1)",
            dl_error()
        ));
    }
    Ok(h)
}

/// # Safety
/// `lib` is a handle from `open_library`; `name` ends with a NUL byte.
unsafe fn symbol(lib: *mut c_void, soname: &str, name: &str) -> Result<*mut c_void, String> {
    let p = libc::dlsym(lib, name.as_ptr().cast());
    if p.is_null() {
        return Err(format!(
            "{soname} has no symbol {} (Ceph 16 or newer is needed)",
            name.trim_end_matches('\0')
        ));
    }
    Ok(p)
}

fn dl_error() -> String {
    // SAFETY: dlerror returns NULL or a valid C string owned by libc.
    let e = unsafe { libc::dlerror() };
    if e.is_null() {
        "unknown error".into()
    } else {
        copy_cstr(e)
    }
}

ceph_api! {
    lib rados = "librados.so.2";
    fn rados_create(cluster: *mut rados_t, id: *const c_char) -> c_int;
    fn rados_conf_set(cluster: rados_t, option: *const c_char, value: *const c_char) -> c_int;
    fn rados_connect(cluster: rados_t) -> c_int;
    fn rados_shutdown(cluster: rados_t);
    fn rados_cluster_fsid(cluster: rados_t, buf: *mut c_char, len: size_t) -> c_int;
    fn rados_get_instance_id(cluster: rados_t) -> u64;
    fn rados_pool_lookup(cluster: rados_t, pool_name: *const c_char) -> i64;
    fn rados_pool_reverse_lookup(
        cluster: rados_t,
        id: i64,
        buf: *mut c_char,
        maxlen: size_t,
    ) -> c_int;
    fn rados_ioctx_create(
        cluster: rados_t,
        pool_name: *const c_char,
        ioctx: *mut rados_ioctx_t,
    ) -> c_int;
    fn rados_ioctx_create2(cluster: rados_t, pool_id: i64, ioctx: *mut rados_ioctx_t) -> c_int;
    fn rados_ioctx_destroy(io: rados_ioctx_t);
    fn rados_ioctx_get_id(io: rados_ioctx_t) -> i64;
    fn rados_ioctx_set_namespace(io: rados_ioctx_t, nspace: *const c_char);
    fn rados_mon_command(
        cluster: rados_t,
        cmd: *mut *const c_char,
        cmdlen: size_t,
        inbuf: *const c_char,
        inbuflen: size_t,
        outbuf: *mut *mut c_char,
        outbuflen: *mut size_t,
        outs: *mut *mut c_char,
        outslen: *mut size_t,
    ) -> c_int;
    fn rados_mgr_command(
        cluster: rados_t,
        cmd: *mut *const c_char,
        cmdlen: size_t,
        inbuf: *const c_char,
        inbuflen: size_t,
        outbuf: *mut *mut c_char,
        outbuflen: *mut size_t,
        outs: *mut *mut c_char,
        outslen: *mut size_t,
    ) -> c_int;
    fn rados_buffer_free(buf: *mut c_char);
    fn rados_exec(
        io: rados_ioctx_t,
        oid: *const c_char,
        cls: *const c_char,
        method: *const c_char,
        in_buf: *const c_char,
        in_len: size_t,
        buf: *mut c_char,
        out_len: size_t,
    ) -> c_int;
    fn rados_remove(io: rados_ioctx_t, oid: *const c_char) -> c_int;
    fn rados_stat(
        io: rados_ioctx_t,
        o: *const c_char,
        psize: *mut u64,
        pmtime: *mut time_t,
    ) -> c_int;

    fn rados_omap_get_next2(
        iter: rados_omap_iter_t,
        key: *mut *mut c_char,
        val: *mut *mut c_char,
        key_len: *mut size_t,
        val_len: *mut size_t,
    ) -> c_int;
    fn rados_omap_get_end(iter: rados_omap_iter_t);

    fn rados_create_write_op() -> rados_write_op_t;
    fn rados_release_write_op(write_op: rados_write_op_t);
    fn rados_write_op_create(write_op: rados_write_op_t, exclusive: c_int, category: *const c_char);
    fn rados_write_op_omap_set2(
        write_op: rados_write_op_t,
        keys: *const *const c_char,
        vals: *const *const c_char,
        key_lens: *const size_t,
        val_lens: *const size_t,
        num: size_t,
    );
    fn rados_write_op_omap_cmp(
        write_op: rados_write_op_t,
        key: *const c_char,
        comparison_operator: u8,
        val: *const c_char,
        val_len: size_t,
        prval: *mut c_int,
    );
    fn rados_write_op_omap_rm_keys2(
        write_op: rados_write_op_t,
        keys: *const *const c_char,
        key_lens: *const size_t,
        keys_len: size_t,
    );
    fn rados_write_op_assert_version(write_op: rados_write_op_t, ver: u64);
    fn rados_write_op_setxattr(
        write_op: rados_write_op_t,
        name: *const c_char,
        value: *const c_char,
        value_len: size_t,
    );
    fn rados_write_op_write_full(write_op: rados_write_op_t, buffer: *const c_char, len: size_t);
    fn rados_write_op_remove(write_op: rados_write_op_t);
    fn rados_write_op_operate(
        write_op: rados_write_op_t,
        io: rados_ioctx_t,
        oid: *const c_char,
        mtime: *mut time_t,
        flags: c_int,
    ) -> c_int;

    fn rados_aio_create_completion2(
        cb_arg: *mut c_void,
        cb_complete: Option<unsafe extern "C" fn(rados_completion_t, *mut c_void)>,
        pc: *mut rados_completion_t,
    ) -> c_int;
    fn rados_aio_write_op_operate(
        write_op: rados_write_op_t,
        io: rados_ioctx_t,
        completion: rados_completion_t,
        oid: *const c_char,
        mtime: *mut time_t,
        flags: c_int,
    ) -> c_int;
    fn rados_aio_wait_for_complete(c: rados_completion_t) -> c_int;
    fn rados_aio_get_return_value(c: rados_completion_t) -> c_int;
    fn rados_aio_release(c: rados_completion_t);

    fn rados_create_read_op() -> rados_read_op_t;
    fn rados_release_read_op(read_op: rados_read_op_t);
    fn rados_read_op_omap_get_vals2(
        read_op: rados_read_op_t,
        start_after: *const c_char,
        filter_prefix: *const c_char,
        max_return: u64,
        iter: *mut rados_omap_iter_t,
        pmore: *mut u8,
        prval: *mut c_int,
    );
    fn rados_read_op_omap_get_vals_by_keys2(
        read_op: rados_read_op_t,
        keys: *const *const c_char,
        num_keys: size_t,
        key_lens: *const size_t,
        iter: *mut rados_omap_iter_t,
        prval: *mut c_int,
    );
    fn rados_read_op_assert_version(read_op: rados_read_op_t, ver: u64);
    fn rados_read_op_read(
        read_op: rados_read_op_t,
        offset: u64,
        len: size_t,
        buffer: *mut c_char,
        bytes_read: *mut size_t,
        prval: *mut c_int,
    );
    fn rados_getxattr(
        io: rados_ioctx_t,
        o: *const c_char,
        name: *const c_char,
        buf: *mut c_char,
        len: size_t,
    ) -> c_int;
    fn rados_get_last_version(io: rados_ioctx_t) -> u64;
    fn rados_read_op_operate(
        read_op: rados_read_op_t,
        io: rados_ioctx_t,
        oid: *const c_char,
        flags: c_int,
    ) -> c_int;

    lib rbd = "librbd.so.1";
    fn rbd_image_options_create(opts: *mut rbd_image_options_t);
    fn rbd_image_options_destroy(opts: rbd_image_options_t);
    fn rbd_image_options_set_string(
        opts: rbd_image_options_t,
        optname: c_int,
        optval: *const c_char,
    ) -> c_int;
    fn rbd_image_options_set_uint64(
        opts: rbd_image_options_t,
        optname: c_int,
        optval: u64,
    ) -> c_int;

    fn rbd_image_spec_list_cleanup(images: *mut rbd_image_spec_t, num_images: size_t);
    fn rbd_linked_image_spec_cleanup(image: *mut rbd_linked_image_spec_t);
    fn rbd_snap_spec_cleanup(snap: *mut rbd_snap_spec_t);

    fn rbd_list2(
        io: rados_ioctx_t,
        images: *mut rbd_image_spec_t,
        max_images: *mut size_t,
    ) -> c_int;
    fn rbd_create4(
        io: rados_ioctx_t,
        name: *const c_char,
        size: u64,
        opts: rbd_image_options_t,
    ) -> c_int;
    fn rbd_clone3(
        p_ioctx: rados_ioctx_t,
        p_name: *const c_char,
        p_snapname: *const c_char,
        c_ioctx: rados_ioctx_t,
        c_name: *const c_char,
        c_opts: rbd_image_options_t,
    ) -> c_int;
    fn rbd_remove(io: rados_ioctx_t, name: *const c_char) -> c_int;
    fn rbd_trash_move(io: rados_ioctx_t, name: *const c_char, delay: u64) -> c_int;
    fn rbd_trash_remove(io: rados_ioctx_t, id: *const c_char, force: bool) -> c_int;
    fn rbd_trash_list(
        io: rados_ioctx_t,
        entries: *mut rbd_trash_image_info_t,
        num_entries: *mut size_t,
    ) -> c_int;
    fn rbd_trash_list_cleanup(entries: *mut rbd_trash_image_info_t, num_entries: size_t);

    fn rbd_open(
        io: rados_ioctx_t,
        name: *const c_char,
        image: *mut rbd_image_t,
        snap_name: *const c_char,
    ) -> c_int;
    fn rbd_open_read_only(
        io: rados_ioctx_t,
        name: *const c_char,
        image: *mut rbd_image_t,
        snap_name: *const c_char,
    ) -> c_int;
    fn rbd_open_by_id_read_only(
        io: rados_ioctx_t,
        id: *const c_char,
        image: *mut rbd_image_t,
        snap_name: *const c_char,
    ) -> c_int;
    fn rbd_close(image: rbd_image_t) -> c_int;
    fn rbd_resize(image: rbd_image_t, size: u64) -> c_int;
    fn rbd_stat(image: rbd_image_t, info: *mut rbd_image_info_t, infosize: size_t) -> c_int;
    fn rbd_get_size(image: rbd_image_t, size: *mut u64) -> c_int;
    fn rbd_get_features(image: rbd_image_t, features: *mut u64) -> c_int;
    fn rbd_get_id(image: rbd_image_t, id: *mut c_char, id_len: size_t) -> c_int;
    fn rbd_get_parent(
        image: rbd_image_t,
        parent_image: *mut rbd_linked_image_spec_t,
        parent_snap: *mut rbd_snap_spec_t,
    ) -> c_int;
    fn rbd_lock_get_owners(
        image: rbd_image_t,
        lock_mode: *mut c_int,
        lock_owners: *mut *mut c_char,
        max_lock_owners: *mut size_t,
    ) -> c_int;
    fn rbd_lock_get_owners_cleanup(lock_owners: *mut *mut c_char, lock_owner_count: size_t);
    fn rbd_lock_break(image: rbd_image_t, lock_mode: c_int, lock_owner: *const c_char) -> c_int;

    fn rbd_snap_list(
        image: rbd_image_t,
        snaps: *mut rbd_snap_info_t,
        max_snaps: *mut c_int,
    ) -> c_int;
    fn rbd_snap_list_end(snaps: *mut rbd_snap_info_t);
    fn rbd_snap_get_timestamp(image: rbd_image_t, snap_id: u64, timestamp: *mut libc::timespec)
        -> c_int;
    fn rbd_snap_create2(
        image: rbd_image_t,
        snapname: *const c_char,
        flags: u32,
        cb: Option<unsafe extern "C" fn(u64, u64, *mut c_void) -> c_int>,
        cbdata: *mut c_void,
    ) -> c_int;
    fn rbd_snap_remove(image: rbd_image_t, snapname: *const c_char) -> c_int;
    fn rbd_snap_protect(image: rbd_image_t, snap_name: *const c_char) -> c_int;
    fn rbd_snap_unprotect(image: rbd_image_t, snap_name: *const c_char) -> c_int;
    fn rbd_snap_is_protected(
        image: rbd_image_t,
        snap_name: *const c_char,
        is_protected: *mut c_int,
    ) -> c_int;
    fn rbd_flatten(image: rbd_image_t) -> c_int;

    fn rbd_read(image: rbd_image_t, ofs: u64, len: size_t, buf: *mut c_char) -> ssize_t;
    fn rbd_write(image: rbd_image_t, ofs: u64, len: size_t, buf: *const c_char) -> ssize_t;
    fn rbd_discard(image: rbd_image_t, ofs: u64, len: u64) -> c_int;
    fn rbd_write_zeroes(
        image: rbd_image_t,
        ofs: u64,
        len: size_t,
        zero_flags: c_int,
        op_flags: c_int,
    ) -> ssize_t;
    fn rbd_flush(image: rbd_image_t) -> c_int;

    fn rbd_metadata_get(
        image: rbd_image_t,
        key: *const c_char,
        value: *mut c_char,
        val_len: *mut size_t,
    ) -> c_int;
    fn rbd_metadata_set(image: rbd_image_t, key: *const c_char, value: *const c_char) -> c_int;
    fn rbd_metadata_remove(image: rbd_image_t, key: *const c_char) -> c_int;

    fn rbd_watchers_list(
        image: rbd_image_t,
        watchers: *mut rbd_image_watcher_t,
        max_watchers: *mut size_t,
    ) -> c_int;
    fn rbd_watchers_list_cleanup(watchers: *mut rbd_image_watcher_t, num_watchers: size_t);
}

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Upper bound for any buffer grown after `-ERANGE`.
const MAX_BUF: usize = 1 << 20;
/// Upper bound for the number of retries of any "ask for the size, then
/// fetch" loop (the size can legitimately change between two calls when
/// images, snapshots or watchers are added concurrently).
const MAX_TRIES: usize = 16;

fn rc(ret: c_int) -> SysResult<c_int> {
    if ret < 0 {
        Err(ret.saturating_neg())
    } else {
        Ok(ret)
    }
}

/// Converts a Rust string to a C string; an interior NUL is `EINVAL`.
pub(crate) fn cstr(s: &str) -> SysResult<CString> {
    CString::new(s).map_err(|_| libc::EINVAL)
}

/// Copies a NUL-terminated C string owned by librados/librbd. NULL → "".
fn copy_cstr(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: the library hands us a valid NUL-terminated string that lives
    // at least until we free it, which happens after this copy.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// String up to the first NUL of a fixed-size buffer.
fn from_nul_buf(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Calls `f(buf, len)` with a growing buffer while it reports `-ERANGE`
/// without telling the needed size. Returns the NUL-terminated content.
fn grow_string(
    initial: usize,
    mut f: impl FnMut(*mut c_char, size_t) -> c_int,
) -> SysResult<String> {
    let mut cap = initial.max(16);
    loop {
        let mut buf = vec![0u8; cap];
        let r = f(buf.as_mut_ptr().cast(), cap);
        if r == -libc::ERANGE {
            if cap >= MAX_BUF {
                return Err(libc::ERANGE);
            }
            cap = (cap * 2).min(MAX_BUF);
            continue;
        }
        rc(r)?;
        return Ok(from_nul_buf(&buf));
    }
}

/// Copies a buffer allocated by librados into a Vec and frees it.
fn take_rados_buffer(p: *mut c_char, len: size_t) -> Vec<u8> {
    if p.is_null() {
        return Vec::new();
    }
    // SAFETY: librados allocated `len` bytes at `p`; we copy them and then
    // release the buffer with the matching deallocator, exactly once.
    unsafe {
        let v = std::slice::from_raw_parts(p.cast::<u8>(), len).to_vec();
        rados_buffer_free(p);
        v
    }
}

// ---------------------------------------------------------------------------
// Cluster handle
// ---------------------------------------------------------------------------

/// An owned `rados_t`. `rados_shutdown` runs on drop.
pub(crate) struct Rados {
    ptr: rados_t,
}

// SAFETY: librados documents its cluster handle as thread safe: every public
// operation on a `RadosClient` takes the client's internal lock or goes
// through the (internally synchronised) Objecter/MonClient. The only
// operations we do not consider thread safe — `rados_conf_set` and
// `rados_connect` — take `&mut self`, so they can only run while the handle is
// exclusively owned, i.e. before it is shared.
unsafe impl Send for Rados {}
// SAFETY: see above.
unsafe impl Sync for Rados {}

impl Rados {
    /// `rados_create(id)`. Note: librados itself consults `CEPH_ARGS` and
    /// `CEPH_KEYRING` here; callers must override every option that matters
    /// with [`Rados::conf_set`] before connecting.
    pub(crate) fn create(id: &str) -> SysResult<Rados> {
        let id = cstr(id)?;
        let mut p: rados_t = ptr::null_mut();
        // SAFETY: `p` is a valid out-pointer, `id` a valid C string.
        rc(unsafe { rados_create(&mut p, id.as_ptr()) })?;
        if p.is_null() {
            return Err(libc::ENOMEM);
        }
        Ok(Rados { ptr: p })
    }

    pub(crate) fn conf_set(&mut self, option: &str, value: &str) -> SysResult<()> {
        let o = cstr(option)?;
        let v = cstr(value)?;
        // SAFETY: valid handle and C strings; librados copies the value.
        rc(unsafe { rados_conf_set(self.ptr, o.as_ptr(), v.as_ptr()) }).map(drop)
    }

    pub(crate) fn connect(&mut self) -> SysResult<()> {
        // SAFETY: valid, not yet connected handle.
        rc(unsafe { rados_connect(self.ptr) }).map(drop)
    }

    /// This client's global id (`client.<id>`, also the watcher id of its watches).
    pub(crate) fn instance_id(&self) -> u64 {
        // SAFETY: valid, connected handle.
        unsafe { rados_get_instance_id(self.ptr) }
    }

    pub(crate) fn fsid(&self) -> SysResult<String> {
        let p = self.ptr;
        // SAFETY: the buffer is valid for `len` bytes.
        grow_string(64, |buf, len| unsafe { rados_cluster_fsid(p, buf, len) })
    }

    pub(crate) fn pool_lookup(&self, name: &str) -> SysResult<i64> {
        let n = cstr(name)?;
        // SAFETY: valid handle and C string.
        let r = unsafe { rados_pool_lookup(self.ptr, n.as_ptr()) };
        if r < 0 {
            Err(i32::try_from(r.saturating_neg()).unwrap_or(libc::EIO))
        } else {
            Ok(r)
        }
    }

    pub(crate) fn pool_reverse_lookup(&self, id: i64) -> SysResult<String> {
        let p = self.ptr;
        // SAFETY: the buffer is valid for `len` bytes.
        grow_string(128, |buf, len| unsafe {
            rados_pool_reverse_lookup(p, id, buf, len)
        })
    }

    /// Opens an io context on the pool named `pool`, in namespace `ns`.
    pub(crate) fn ioctx_by_name(self: &Arc<Self>, pool: &str, ns: &str) -> SysResult<Ioctx> {
        let n = cstr(pool)?;
        let ns = cstr(ns)?;
        let mut io: rados_ioctx_t = ptr::null_mut();
        // SAFETY: valid handle, C string and out-pointer.
        rc(unsafe { rados_ioctx_create(self.ptr, n.as_ptr(), &mut io) })?;
        Ioctx::adopt(io, Arc::clone(self), &ns)
    }

    /// Opens an io context on the pool with id `id`, in namespace `ns`.
    pub(crate) fn ioctx_by_id(self: &Arc<Self>, id: i64, ns: &str) -> SysResult<Ioctx> {
        let ns = cstr(ns)?;
        let mut io: rados_ioctx_t = ptr::null_mut();
        // SAFETY: valid handle and out-pointer.
        rc(unsafe { rados_ioctx_create2(self.ptr, id, &mut io) })?;
        Ioctx::adopt(io, Arc::clone(self), &ns)
    }

    /// Sends a monitor (or, with `mgr`, a manager) command. Returns the raw
    /// return code with the output buffer and status string (the status
    /// string is returned on failure too, it usually explains the error).
    pub(crate) fn command(&self, mgr: bool, cmd: &str, input: &[u8]) -> (i32, Vec<u8>, String) {
        let c = match cstr(cmd) {
            Ok(c) => c,
            Err(e) => return (-e, Vec::new(), "command contains a NUL byte".into()),
        };
        let mut cmds: [*const c_char; 1] = [c.as_ptr()];
        let mut outbuf: *mut c_char = ptr::null_mut();
        let mut outbuflen: size_t = 0;
        let mut outs: *mut c_char = ptr::null_mut();
        let mut outslen: size_t = 0;
        let inbuf: *const c_char = input.as_ptr().cast();
        // SAFETY: all pointers are valid for the duration of the call; the
        // command array holds one valid C string; `input` is valid for
        // `input.len()` bytes (librados only reads it). The output buffers
        // are allocated by librados and freed below.
        let r = unsafe {
            if mgr {
                rados_mgr_command(
                    self.ptr,
                    cmds.as_mut_ptr(),
                    1,
                    inbuf,
                    input.len(),
                    &mut outbuf,
                    &mut outbuflen,
                    &mut outs,
                    &mut outslen,
                )
            } else {
                rados_mon_command(
                    self.ptr,
                    cmds.as_mut_ptr(),
                    1,
                    inbuf,
                    input.len(),
                    &mut outbuf,
                    &mut outbuflen,
                    &mut outs,
                    &mut outslen,
                )
            }
        };
        let out = take_rados_buffer(outbuf, outbuflen);
        let status = take_rados_buffer(outs, outslen);
        (r, out, String::from_utf8_lossy(&status).into_owned())
    }
}

impl Drop for Rados {
    fn drop(&mut self) {
        // SAFETY: we own the handle; it is shut down exactly once, and no
        // io context or image can outlive it (they hold an Arc<Rados>).
        // rados_shutdown is also the documented way to free a handle whose
        // connect failed or never happened.
        unsafe { rados_shutdown(self.ptr) }
    }
}

// ---------------------------------------------------------------------------
// IO context
// ---------------------------------------------------------------------------

/// An owned `rados_ioctx_t` with its namespace set. Keeps the cluster alive.
pub(crate) struct Ioctx {
    ptr: rados_ioctx_t,
    // Dropped after `Drop::drop` destroyed `ptr`.
    cluster: Arc<Rados>,
}

// SAFETY: a librados io context may be used from any thread; it is only not
// safe to change its settings (namespace, snap context) concurrently with
// other use, which we never do after construction. We do not implement Sync
// to keep it that way.
unsafe impl Send for Ioctx {}

impl Ioctx {
    fn adopt(io: rados_ioctx_t, cluster: Arc<Rados>, ns: &CStr) -> SysResult<Ioctx> {
        if io.is_null() {
            return Err(libc::ENOMEM);
        }
        let me = Ioctx { ptr: io, cluster };
        // SAFETY: valid io context and C string (librados copies it).
        unsafe { rados_ioctx_set_namespace(me.ptr, ns.as_ptr()) };
        Ok(me)
    }

    pub(crate) fn cluster(&self) -> &Arc<Rados> {
        &self.cluster
    }

    pub(crate) fn pool_id(&self) -> i64 {
        // SAFETY: valid io context.
        unsafe { rados_ioctx_get_id(self.ptr) }
    }

    pub(crate) fn remove(&self, oid: &str) -> SysResult<()> {
        let o = cstr(oid)?;
        // SAFETY: valid io context and C string.
        rc(unsafe { rados_remove(self.ptr, o.as_ptr()) }).map(drop)
    }

    /// Returns (size, mtime as seconds since the epoch).
    /// Calls OSD class method `cls.method` on `oid` with `input` (no output wanted).
    pub(crate) fn exec(&self, oid: &str, cls: &str, method: &str, input: &[u8]) -> SysResult<()> {
        let (o, c, m) = (cstr(oid)?, cstr(cls)?, cstr(method)?);
        // SAFETY: valid io context and C strings; `input` is valid for its length; no
        // output buffer (length 0).
        rc(unsafe {
            rados_exec(
                self.ptr,
                o.as_ptr(),
                c.as_ptr(),
                m.as_ptr(),
                input.as_ptr().cast(),
                input.len(),
                ptr::null_mut(),
                0,
            )
        })
        .map(drop)
    }

    pub(crate) fn stat(&self, oid: &str) -> SysResult<(u64, i64)> {
        let o = cstr(oid)?;
        let mut size: u64 = 0;
        let mut mtime: time_t = 0;
        // SAFETY: valid io context, C string and out-pointers.
        rc(unsafe { rados_stat(self.ptr, o.as_ptr(), &mut size, &mut mtime) })?;
        // time_t is i64 on LP64 targets but not everywhere.
        #[allow(clippy::useless_conversion)]
        let mtime = i64::from(mtime);
        Ok((size, mtime))
    }

    /// Runs one compound write operation on `oid`, atomically.
    pub(crate) fn write_op(&self, oid: &str, actions: &[WriteAction<'_>]) -> SysResult<()> {
        let o = cstr(oid)?;
        let op = WriteOp::new()?;
        // Written by librados during `operate`; declared before use, never resized.
        let mut prvals: Vec<c_int> = vec![0; actions.len()];
        fill_write_op(&op, actions, &mut prvals)?;
        // SAFETY: valid op, io context and C string; mtime NULL = now.
        rc(unsafe { rados_write_op_operate(op.0, self.ptr, o.as_ptr(), ptr::null_mut(), 0) })
            .map(drop)
    }

    /// Starts one compound write operation on `oid` without waiting for it; the result
    /// comes from [`AioWrite::wait`]. Comparisons ([`WriteAction::OmapCmpEq`]) are not
    /// supported here (`EINVAL`).
    pub(crate) fn aio_write_op(
        &self,
        oid: &str,
        actions: &[WriteAction<'_>],
    ) -> SysResult<AioWrite<'_>> {
        if actions
            .iter()
            .any(|a| matches!(a, WriteAction::OmapCmpEq(..)))
        {
            return Err(libc::EINVAL);
        }
        let o = cstr(oid)?;
        let op = WriteOp::new()?;
        fill_write_op(&op, actions, &mut [])?;
        let mut comp: rados_completion_t = ptr::null_mut();
        // SAFETY: out-pointer valid; no callback.
        rc(unsafe { rados_aio_create_completion2(ptr::null_mut(), None, &mut comp) })?;
        let mut pending = AioWrite {
            comp,
            op,
            started: false,
            _io: std::marker::PhantomData,
        };
        // SAFETY: valid op, io context, completion and C string (copied by librados); the
        // op and completion live in `pending` until the operation completed.
        rc(unsafe {
            rados_aio_write_op_operate(
                pending.op.0,
                self.ptr,
                pending.comp,
                o.as_ptr(),
                ptr::null_mut(),
                0,
            )
        })?;
        pending.started = true;
        Ok(pending)
    }

    /// One page of omap entries: `(entries, more)`.
    pub(crate) fn omap_get_vals(
        &self,
        oid: &str,
        start_after: &str,
        filter_prefix: &str,
        max: u64,
    ) -> SysResult<(OmapEntries, bool)> {
        let o = cstr(oid)?;
        let sa = cstr(start_after)?;
        let fp = cstr(filter_prefix)?;
        // Declared before the op so that it is dropped after it.
        let mut iter = OmapIter(ptr::null_mut());
        let mut more: u8 = 0;
        let mut prval: c_int = 0;
        let op = ReadOp::new()?;
        // SAFETY: valid op and C strings (copied into the op). `iter`,
        // `more` and `prval` are written during `rados_read_op_operate` and
        // outlive it.
        unsafe {
            rados_read_op_omap_get_vals2(
                op.0,
                sa.as_ptr(),
                fp.as_ptr(),
                max,
                &mut iter.0,
                &mut more,
                &mut prval,
            );
        }
        // SAFETY: valid op, io context and C string.
        rc(unsafe { rados_read_op_operate(op.0, self.ptr, o.as_ptr(), 0) })?;
        rc(prval)?;
        let entries = iter.drain()?;
        Ok((entries, more != 0))
    }

    /// The values of `keys` that exist.
    pub(crate) fn omap_get_vals_by_keys(
        &self,
        oid: &str,
        keys: &[&[u8]],
    ) -> SysResult<OmapEntries> {
        let o = cstr(oid)?;
        let kptr: Vec<*const c_char> = keys.iter().map(|k| k.as_ptr().cast()).collect();
        let klen: Vec<size_t> = keys.iter().map(|k| k.len()).collect();
        let mut iter = OmapIter(ptr::null_mut());
        let mut prval: c_int = 0;
        let op = ReadOp::new()?;
        // SAFETY: arrays of `keys.len()` entries, each key valid for its
        // length (copied into the op); `iter`/`prval` outlive the operate.
        unsafe {
            rados_read_op_omap_get_vals_by_keys2(
                op.0,
                kptr.as_ptr(),
                keys.len(),
                klen.as_ptr(),
                &mut iter.0,
                &mut prval,
            );
        }
        // SAFETY: valid op, io context and C string.
        rc(unsafe { rados_read_op_operate(op.0, self.ptr, o.as_ptr(), 0) })?;
        rc(prval)?;
        iter.drain()
    }

    /// The value of xattr `name` of `oid` (at most `max` bytes) and the object's version
    /// as this read saw it.
    pub(crate) fn getxattr_versioned(
        &self,
        oid: &str,
        name: &str,
        max: usize,
    ) -> SysResult<(Vec<u8>, u64)> {
        let (o, n) = (cstr(oid)?, cstr(name)?);
        let mut buf = vec![0u8; max];
        // SAFETY: valid io context and C strings; `buf` is valid for `max` bytes.
        let len = rc(unsafe {
            rados_getxattr(
                self.ptr,
                o.as_ptr(),
                n.as_ptr(),
                buf.as_mut_ptr().cast(),
                max,
            )
        })?;
        // SAFETY: valid io context; the version of this io context's last synchronous
        // operation, which is the read above (an `Ioctx` is used from one thread at a time).
        let ver = unsafe { rados_get_last_version(self.ptr) };
        buf.truncate(usize::try_from(len).unwrap_or(0).min(max));
        Ok((buf, ver))
    }

    /// Reads up to `len` bytes from offset 0 and the values of `keys`, in one operation
    /// that fails (`ERANGE` / `EOVERFLOW`) unless the object is at version `ver`.
    pub(crate) fn read_at_version(
        &self,
        oid: &str,
        ver: u64,
        len: usize,
        keys: &[&[u8]],
    ) -> SysResult<(Vec<u8>, OmapEntries)> {
        let o = cstr(oid)?;
        let kptr: Vec<*const c_char> = keys.iter().map(|k| k.as_ptr().cast()).collect();
        let klen: Vec<size_t> = keys.iter().map(|k| k.len()).collect();
        let mut buf = vec![0u8; len];
        let mut read: size_t = 0;
        let mut read_rv: c_int = 0;
        let mut iter = OmapIter(ptr::null_mut());
        let mut omap_rv: c_int = 0;
        let op = ReadOp::new()?;
        // SAFETY: valid op; `buf`, `read`, the key arrays, `iter` and the two result slots
        // outlive `operate` below and are not moved before it.
        unsafe {
            rados_read_op_assert_version(op.0, ver);
            rados_read_op_read(
                op.0,
                0,
                len,
                buf.as_mut_ptr().cast(),
                &mut read,
                &mut read_rv,
            );
            if !keys.is_empty() {
                rados_read_op_omap_get_vals_by_keys2(
                    op.0,
                    kptr.as_ptr(),
                    keys.len(),
                    klen.as_ptr(),
                    &mut iter.0,
                    &mut omap_rv,
                );
            }
        }
        // SAFETY: valid op, io context and C string.
        rc(unsafe { rados_read_op_operate(op.0, self.ptr, o.as_ptr(), 0) })?;
        rc(read_rv)?;
        rc(omap_rv)?;
        buf.truncate(read.min(len));
        let entries = if keys.is_empty() {
            Vec::new()
        } else {
            iter.drain()?
        };
        Ok((buf, entries))
    }
}

impl Drop for Ioctx {
    fn drop(&mut self) {
        // SAFETY: we own the io context; the cluster is still alive because
        // `self.cluster` is only released after this returns.
        unsafe { rados_ioctx_destroy(self.ptr) }
    }
}

/// One step of a compound write operation.
pub(crate) enum WriteAction<'a> {
    Create {
        exclusive: bool,
    },
    OmapSet(&'a [(&'a [u8], &'a [u8])]),
    OmapRmKeys(&'a [&'a [u8]]),
    /// Fails the whole op with `ECANCELED` unless omap key `.0` holds `.1`; a missing key
    /// compares as empty.
    OmapCmpEq(&'a str, &'a [u8]),
    /// Fails the whole op (`ERANGE` / `EOVERFLOW`) unless the object is at this version.
    AssertVersion(u64),
    SetXattr(&'a str, &'a [u8]),
    WriteFull(&'a [u8]),
    Remove,
}

/// Adds `actions` to `op`. `prvals` has one slot per action for those that report a
/// result of their own (comparisons); it must outlive the operation.
fn fill_write_op(op: &WriteOp, actions: &[WriteAction<'_>], prvals: &mut [c_int]) -> SysResult<()> {
    for (i, a) in actions.iter().enumerate() {
        match a {
            WriteAction::Create { exclusive } => {
                // SAFETY: valid op; category is ignored and may be NULL.
                unsafe { rados_write_op_create(op.0, c_int::from(*exclusive), ptr::null()) }
            }
            WriteAction::OmapSet(pairs) => {
                if pairs.is_empty() {
                    continue;
                }
                let keys: Vec<*const c_char> =
                    pairs.iter().map(|(k, _)| k.as_ptr().cast()).collect();
                let vals: Vec<*const c_char> =
                    pairs.iter().map(|(_, v)| v.as_ptr().cast()).collect();
                let klen: Vec<size_t> = pairs.iter().map(|(k, _)| k.len()).collect();
                let vlen: Vec<size_t> = pairs.iter().map(|(_, v)| v.len()).collect();
                // SAFETY: four arrays of `pairs.len()` entries; each key
                // and value pointer is valid for its length. librados
                // copies everything into the op before returning.
                unsafe {
                    rados_write_op_omap_set2(
                        op.0,
                        keys.as_ptr(),
                        vals.as_ptr(),
                        klen.as_ptr(),
                        vlen.as_ptr(),
                        pairs.len(),
                    )
                }
            }
            WriteAction::OmapCmpEq(key, val) => {
                let k = cstr(key)?;
                // SAFETY: valid op and C string; `val` is valid for its length and
                // copied into the op; `prvals[i]` outlives `operate` below.
                unsafe {
                    rados_write_op_omap_cmp(
                        op.0,
                        k.as_ptr(),
                        LIBRADOS_CMPXATTR_OP_EQ,
                        val.as_ptr().cast(),
                        val.len(),
                        prvals.get_mut(i).ok_or(libc::EINVAL)?,
                    )
                }
            }
            WriteAction::AssertVersion(v) => {
                // SAFETY: valid op.
                unsafe { rados_write_op_assert_version(op.0, *v) }
            }
            WriteAction::SetXattr(name, value) => {
                let n = cstr(name)?;
                // SAFETY: valid op and C string; `value` is valid for its length; librados
                // copies both into the op.
                unsafe {
                    rados_write_op_setxattr(op.0, n.as_ptr(), value.as_ptr().cast(), value.len())
                }
            }
            WriteAction::WriteFull(data) => {
                // SAFETY: valid op; `data` is valid for its length and copied into the op.
                unsafe { rados_write_op_write_full(op.0, data.as_ptr().cast(), data.len()) }
            }
            WriteAction::Remove => {
                // SAFETY: valid op.
                unsafe { rados_write_op_remove(op.0) }
            }
            WriteAction::OmapRmKeys(ks) => {
                if ks.is_empty() {
                    continue;
                }
                let keys: Vec<*const c_char> = ks.iter().map(|k| k.as_ptr().cast()).collect();
                let klen: Vec<size_t> = ks.iter().map(|k| k.len()).collect();
                // SAFETY: as above; librados copies the keys.
                unsafe {
                    rados_write_op_omap_rm_keys2(op.0, keys.as_ptr(), klen.as_ptr(), ks.len())
                }
            }
        }
    }
    Ok(())
}

/// A write operation in flight. Waiting for it, or dropping it, blocks until librados is
/// done with it (bounded by the OSD op timeout of the connection).
pub(crate) struct AioWrite<'a> {
    comp: rados_completion_t,
    op: WriteOp,
    started: bool,
    _io: std::marker::PhantomData<&'a Ioctx>,
}

impl AioWrite<'_> {
    pub(crate) fn wait(self) -> SysResult<()> {
        // SAFETY: a valid completion of a submitted operation.
        let r = unsafe {
            rados_aio_wait_for_complete(self.comp);
            rados_aio_get_return_value(self.comp)
        };
        rc(r).map(drop)
    }
}

impl Drop for AioWrite<'_> {
    fn drop(&mut self) {
        // SAFETY: the completion is ours; librados must be done with it (and with the op,
        // dropped right after) before it is released.
        unsafe {
            if self.started {
                rados_aio_wait_for_complete(self.comp);
            }
            rados_aio_release(self.comp);
        }
    }
}

struct WriteOp(rados_write_op_t);

impl WriteOp {
    fn new() -> SysResult<WriteOp> {
        // SAFETY: plain allocation.
        let p = unsafe { rados_create_write_op() };
        if p.is_null() {
            Err(libc::ENOMEM)
        } else {
            Ok(WriteOp(p))
        }
    }
}

impl Drop for WriteOp {
    fn drop(&mut self) {
        // SAFETY: we own the op.
        unsafe { rados_release_write_op(self.0) }
    }
}

struct ReadOp(rados_read_op_t);

impl ReadOp {
    fn new() -> SysResult<ReadOp> {
        // SAFETY: plain allocation.
        let p = unsafe { rados_create_read_op() };
        if p.is_null() {
            Err(libc::ENOMEM)
        } else {
            Ok(ReadOp(p))
        }
    }
}

impl Drop for ReadOp {
    fn drop(&mut self) {
        // SAFETY: we own the op.
        unsafe { rados_release_read_op(self.0) }
    }
}

struct OmapIter(rados_omap_iter_t);

impl OmapIter {
    fn drain(&mut self) -> SysResult<OmapEntries> {
        let mut out = Vec::new();
        if self.0.is_null() {
            return Ok(out);
        }
        loop {
            let mut k: *mut c_char = ptr::null_mut();
            let mut v: *mut c_char = ptr::null_mut();
            let mut kl: size_t = 0;
            let mut vl: size_t = 0;
            // SAFETY: valid iterator and out-pointers.
            rc(unsafe { rados_omap_get_next2(self.0, &mut k, &mut v, &mut kl, &mut vl) })?;
            if k.is_null() {
                return Ok(out);
            }
            // SAFETY: librados returns pointers valid for the given lengths
            // until the next call on the iterator; we copy immediately.
            let key = unsafe { std::slice::from_raw_parts(k.cast::<u8>(), kl) }.to_vec();
            let val = if v.is_null() || vl == 0 {
                Vec::new()
            } else {
                // SAFETY: as above.
                unsafe { std::slice::from_raw_parts(v.cast::<u8>(), vl) }.to_vec()
            };
            out.push((key, val));
        }
    }
}

impl Drop for OmapIter {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: we own the iterator (allocated by librados when the op
            // was built), it is released exactly once.
            unsafe { rados_omap_get_end(self.0) }
        }
    }
}

// ---------------------------------------------------------------------------
// RBD: pool-level operations
// ---------------------------------------------------------------------------

/// An owned `rbd_image_options_t`.
pub(crate) struct ImageOpts(rbd_image_options_t);

impl ImageOpts {
    pub(crate) fn new() -> SysResult<ImageOpts> {
        let mut p: rbd_image_options_t = ptr::null_mut();
        // SAFETY: valid out-pointer.
        unsafe { rbd_image_options_create(&mut p) };
        if p.is_null() {
            Err(libc::ENOMEM)
        } else {
            Ok(ImageOpts(p))
        }
    }

    pub(crate) fn set_u64(&mut self, opt: c_int, val: u64) -> SysResult<()> {
        // SAFETY: valid options handle.
        rc(unsafe { rbd_image_options_set_uint64(self.0, opt, val) }).map(drop)
    }

    pub(crate) fn set_str(&mut self, opt: c_int, val: &str) -> SysResult<()> {
        let v = cstr(val)?;
        // SAFETY: valid options handle and C string (copied).
        rc(unsafe { rbd_image_options_set_string(self.0, opt, v.as_ptr()) }).map(drop)
    }
}

impl Drop for ImageOpts {
    fn drop(&mut self) {
        // SAFETY: we own the options handle.
        unsafe { rbd_image_options_destroy(self.0) }
    }
}

pub(crate) fn rbd_create(io: &Ioctx, name: &str, size: u64, opts: &mut ImageOpts) -> SysResult<()> {
    let n = cstr(name)?;
    // SAFETY: valid io context, C string and options handle.
    rc(unsafe { rbd_create4(io.ptr, n.as_ptr(), size, opts.0) }).map(drop)
}

pub(crate) fn rbd_clone(
    parent_io: &Ioctx,
    parent: &str,
    snap: &str,
    child_io: &Ioctx,
    child: &str,
    opts: &mut ImageOpts,
) -> SysResult<()> {
    let p = cstr(parent)?;
    let s = cstr(snap)?;
    let c = cstr(child)?;
    // SAFETY: valid io contexts, C strings and options handle.
    rc(unsafe {
        rbd_clone3(
            parent_io.ptr,
            p.as_ptr(),
            s.as_ptr(),
            child_io.ptr,
            c.as_ptr(),
            opts.0,
        )
    })
    .map(drop)
}

pub(crate) fn rbd_remove_image(io: &Ioctx, name: &str) -> SysResult<()> {
    let n = cstr(name)?;
    // SAFETY: valid io context and C string.
    rc(unsafe { rbd_remove(io.ptr, n.as_ptr()) }).map(drop)
}

pub(crate) fn rbd_trash_move_image(io: &Ioctx, name: &str, delay_secs: u64) -> SysResult<()> {
    let n = cstr(name)?;
    // SAFETY: valid io context and C string.
    rc(unsafe { rbd_trash_move(io.ptr, n.as_ptr(), delay_secs) }).map(drop)
}

pub(crate) fn rbd_trash_remove_image(io: &Ioctx, id: &str, force: bool) -> SysResult<()> {
    let i = cstr(id)?;
    // SAFETY: valid io context and C string.
    rc(unsafe { rbd_trash_remove(io.ptr, i.as_ptr(), force) }).map(drop)
}

/// A trash entry: id, name, source, deletion time, deferment end (unix seconds).
pub(crate) type RawTrashEntry = (String, String, i32, i64, i64);

/// Every image in the trash of the io context's pool/namespace.
pub(crate) fn rbd_trash_entries(io: &Ioctx) -> SysResult<Vec<RawTrashEntry>> {
    let mut cap: size_t = 64;
    for _ in 0..MAX_TRIES {
        let mut entries: Vec<rbd_trash_image_info_t> = (0..cap)
            .map(|_| rbd_trash_image_info_t {
                id: ptr::null_mut(),
                name: ptr::null_mut(),
                source: 0,
                deletion_time: 0,
                deferment_end_time: 0,
            })
            .collect();
        let mut n: size_t = cap;
        // SAFETY: `entries` has room for `n` entries.
        let r = unsafe { rbd_trash_list(io.ptr, entries.as_mut_ptr(), &mut n) };
        if r == -libc::ERANGE {
            let want = n.max(cap.saturating_mul(2)).saturating_add(16);
            if want > MAX_BUF {
                return Err(libc::ERANGE);
            }
            cap = want;
            continue;
        }
        rc(r)?;
        let n = n.min(cap);
        let out = entries[..n]
            .iter()
            .map(|e| {
                (
                    copy_cstr(e.id),
                    copy_cstr(e.name),
                    e.source,
                    e.deletion_time,
                    e.deferment_end_time,
                )
            })
            .collect();
        // SAFETY: librbd filled the first `n` entries with strdup'ed strings.
        unsafe { rbd_trash_list_cleanup(entries.as_mut_ptr(), n) };
        return Ok(out);
    }
    Err(libc::ERANGE)
}

/// `(id, name)` of every image in the io context's pool/namespace.
pub(crate) fn rbd_list_images(io: &Ioctx) -> SysResult<Vec<(String, String)>> {
    let mut cap: size_t = 64;
    for _ in 0..MAX_TRIES {
        let mut specs: Vec<rbd_image_spec_t> = (0..cap)
            .map(|_| rbd_image_spec_t {
                id: ptr::null_mut(),
                name: ptr::null_mut(),
            })
            .collect();
        let mut n: size_t = cap;
        // SAFETY: `specs` has room for `n` entries.
        let r = unsafe { rbd_list2(io.ptr, specs.as_mut_ptr(), &mut n) };
        if r == -libc::ERANGE {
            // `n` now holds the needed count; leave room for concurrent
            // creations, but never grow past a sane bound.
            let want = n.max(cap.saturating_mul(2)).saturating_add(16);
            if want > MAX_BUF {
                return Err(libc::ERANGE);
            }
            cap = want;
            continue;
        }
        rc(r)?;
        let n = n.min(cap);
        let out = specs[..n]
            .iter()
            .map(|s| (copy_cstr(s.id), copy_cstr(s.name)))
            .collect();
        // SAFETY: librbd filled the first `n` entries with strdup'ed strings.
        unsafe { rbd_image_spec_list_cleanup(specs.as_mut_ptr(), n) };
        return Ok(out);
    }
    Err(libc::ERANGE)
}

// ---------------------------------------------------------------------------
// RBD: image handle
// ---------------------------------------------------------------------------

/// Raw `rbd_image_info_t` contents.
pub(crate) struct RawImageInfo {
    pub size: u64,
    pub obj_size: u64,
    pub num_objs: u64,
    pub order: i32,
    pub block_name_prefix: String,
}

pub(crate) struct RawParent {
    pub pool_id: i64,
    pub pool_name: String,
    pub pool_namespace: String,
    pub image_id: String,
    pub image_name: String,
    pub trash: bool,
    pub snap_id: u64,
    pub snap_namespace_type: i32,
    pub snap_name: String,
}

/// An open `rbd_image_t`. Closed on drop. Keeps the cluster alive.
pub(crate) struct Image {
    ptr: rbd_image_t,
    // Dropped after `Drop::drop` closed `ptr`.
    _cluster: Arc<Rados>,
}

// SAFETY: librbd image handles are internally synchronised (ImageCtx guards
// its state with owner/image locks and all I/O goes through the thread-safe
// ImageRequestWQ); multi-threaded users such as rbd-nbd and tcmu-runner issue
// concurrent requests on one handle. Closing requires ownership (Drop).
unsafe impl Send for Image {}
// SAFETY: see above.
unsafe impl Sync for Image {}

impl Image {
    pub(crate) fn open(
        io: &Ioctx,
        name: &str,
        snap: Option<&str>,
        read_only: bool,
    ) -> SysResult<Image> {
        let n = cstr(name)?;
        let s = snap.map(cstr).transpose()?;
        let sp = s.as_ref().map_or(ptr::null(), |s| s.as_ptr());
        let mut img: rbd_image_t = ptr::null_mut();
        // SAFETY: valid io context, C strings (or NULL snapshot) and
        // out-pointer.
        let r = unsafe {
            if read_only {
                rbd_open_read_only(io.ptr, n.as_ptr(), &mut img, sp)
            } else {
                rbd_open(io.ptr, n.as_ptr(), &mut img, sp)
            }
        };
        rc(r)?;
        if img.is_null() {
            return Err(libc::ENOMEM);
        }
        Ok(Image {
            ptr: img,
            _cluster: Arc::clone(io.cluster()),
        })
    }

    /// Opens an image by id, read-only (works for images in the trash too).
    pub(crate) fn open_by_id_read_only(io: &Ioctx, id: &str) -> SysResult<Image> {
        let i = cstr(id)?;
        let mut img: rbd_image_t = ptr::null_mut();
        // SAFETY: valid io context, C string, NULL snapshot and out-pointer.
        let r = unsafe { rbd_open_by_id_read_only(io.ptr, i.as_ptr(), &mut img, ptr::null()) };
        rc(r)?;
        if img.is_null() {
            return Err(libc::ENOMEM);
        }
        Ok(Image {
            ptr: img,
            _cluster: Arc::clone(io.cluster()),
        })
    }

    pub(crate) fn stat(&self) -> SysResult<RawImageInfo> {
        let mut info = rbd_image_info_t {
            size: 0,
            obj_size: 0,
            num_objs: 0,
            order: 0,
            block_name_prefix: [0; RBD_MAX_BLOCK_NAME_SIZE],
            parent_pool: 0,
            parent_name: [0; RBD_MAX_IMAGE_NAME_SIZE],
        };
        // SAFETY: valid image and struct of the size we pass.
        rc(unsafe { rbd_stat(self.ptr, &mut info, std::mem::size_of::<rbd_image_info_t>()) })?;
        let prefix: Vec<u8> = info.block_name_prefix.iter().map(|&c| c as u8).collect();
        Ok(RawImageInfo {
            size: info.size,
            obj_size: info.obj_size,
            num_objs: info.num_objs,
            order: info.order,
            block_name_prefix: from_nul_buf(&prefix),
        })
    }

    pub(crate) fn size(&self) -> SysResult<u64> {
        let mut s = 0u64;
        // SAFETY: valid image and out-pointer.
        rc(unsafe { rbd_get_size(self.ptr, &mut s) })?;
        Ok(s)
    }

    pub(crate) fn features(&self) -> SysResult<u64> {
        let mut f = 0u64;
        // SAFETY: valid image and out-pointer.
        rc(unsafe { rbd_get_features(self.ptr, &mut f) })?;
        Ok(f)
    }

    pub(crate) fn id(&self) -> SysResult<String> {
        let p = self.ptr;
        // SAFETY: buffer valid for `len` bytes; librbd NUL-terminates.
        grow_string(64, |buf, len| unsafe { rbd_get_id(p, buf, len) })
    }

    pub(crate) fn resize(&self, size: u64) -> SysResult<()> {
        // SAFETY: valid image.
        rc(unsafe { rbd_resize(self.ptr, size) }).map(drop)
    }

    pub(crate) fn metadata_get(&self, key: &str) -> SysResult<String> {
        let k = cstr(key)?;
        let mut cap: size_t = 256;
        for _ in 0..MAX_TRIES {
            let mut buf = vec![0u8; cap];
            let mut len: size_t = cap;
            // SAFETY: buffer valid for `len` bytes.
            let r = unsafe {
                rbd_metadata_get(self.ptr, k.as_ptr(), buf.as_mut_ptr().cast(), &mut len)
            };
            if r == -libc::ERANGE {
                // librbd reports the needed size (value + NUL) in `len`.
                let want = len.max(cap.saturating_add(1));
                if want > MAX_BUF * 64 {
                    return Err(libc::ERANGE);
                }
                cap = want;
                continue;
            }
            rc(r)?;
            return Ok(from_nul_buf(&buf));
        }
        Err(libc::ERANGE)
    }

    pub(crate) fn metadata_set(&self, key: &str, value: &str) -> SysResult<()> {
        let k = cstr(key)?;
        let v = cstr(value)?;
        // SAFETY: valid image and C strings.
        rc(unsafe { rbd_metadata_set(self.ptr, k.as_ptr(), v.as_ptr()) }).map(drop)
    }

    pub(crate) fn metadata_remove(&self, key: &str) -> SysResult<()> {
        let k = cstr(key)?;
        // SAFETY: valid image and C string.
        rc(unsafe { rbd_metadata_remove(self.ptr, k.as_ptr()) }).map(drop)
    }

    /// Creates a snapshot without asking the image's clients to quiesce first: quiesce
    /// hooks are an rbd-nbd opt-in this project never enables, and a client that died
    /// with the image open would make every request wait until Ceph drops its watch.
    pub(crate) fn snap_create(&self, name: &str) -> SysResult<()> {
        let n = cstr(name)?;
        // SAFETY: valid image and C string; no progress callback.
        rc(unsafe {
            rbd_snap_create2(
                self.ptr,
                n.as_ptr(),
                RBD_SNAP_CREATE_SKIP_QUIESCE,
                None,
                ptr::null_mut(),
            )
        })
        .map(drop)
    }

    pub(crate) fn snap_remove(&self, name: &str) -> SysResult<()> {
        let n = cstr(name)?;
        // SAFETY: valid image and C string.
        rc(unsafe { rbd_snap_remove(self.ptr, n.as_ptr()) }).map(drop)
    }

    pub(crate) fn snap_protect(&self, name: &str) -> SysResult<()> {
        let n = cstr(name)?;
        // SAFETY: valid image and C string.
        rc(unsafe { rbd_snap_protect(self.ptr, n.as_ptr()) }).map(drop)
    }

    pub(crate) fn snap_unprotect(&self, name: &str) -> SysResult<()> {
        let n = cstr(name)?;
        // SAFETY: valid image and C string.
        rc(unsafe { rbd_snap_unprotect(self.ptr, n.as_ptr()) }).map(drop)
    }

    pub(crate) fn snap_is_protected(&self, name: &str) -> SysResult<bool> {
        let n = cstr(name)?;
        let mut p: c_int = 0;
        // SAFETY: valid image, C string and out-pointer.
        rc(unsafe { rbd_snap_is_protected(self.ptr, n.as_ptr(), &mut p) })?;
        Ok(p != 0)
    }

    /// `(id, size, name)` of every snapshot.
    pub(crate) fn snap_list(&self) -> SysResult<Vec<(u64, u64, String)>> {
        let mut cap: c_int = 16;
        for _ in 0..MAX_TRIES {
            let n = usize::try_from(cap).map_err(|_| libc::ERANGE)?;
            let mut snaps: Vec<rbd_snap_info_t> = (0..n)
                .map(|_| rbd_snap_info_t {
                    id: 0,
                    size: 0,
                    name: ptr::null(),
                })
                .collect();
            let mut max = cap;
            // SAFETY: `snaps` has room for `max` entries (librbd zeroes
            // exactly that many, then needs count + 1 for the terminator).
            let r = unsafe { rbd_snap_list(self.ptr, snaps.as_mut_ptr(), &mut max) };
            if r == -libc::ERANGE {
                let want = max.max(cap.saturating_mul(2)).saturating_add(4);
                if usize::try_from(want).unwrap_or(usize::MAX) > MAX_BUF {
                    return Err(libc::ERANGE);
                }
                cap = want;
                continue;
            }
            let count = usize::try_from(rc(r)?).unwrap_or(0).min(n);
            let out = snaps[..count]
                .iter()
                .map(|s| (s.id, s.size, copy_cstr(s.name)))
                .collect();
            // SAFETY: librbd filled `count` entries followed by a NULL-name
            // terminator (or zeroed the array); this frees the names up to
            // the terminator.
            unsafe { rbd_snap_list_end(snaps.as_mut_ptr()) };
            return Ok(out);
        }
        Err(libc::ERANGE)
    }

    /// Creation time of snapshot `snap_id` as (seconds, nanoseconds) since the epoch.
    pub(crate) fn snap_timestamp(&self, snap_id: u64) -> SysResult<(i64, i64)> {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: valid image and out-pointer.
        rc(unsafe { rbd_snap_get_timestamp(self.ptr, snap_id, &mut ts) })?;
        Ok((ts.tv_sec, ts.tv_nsec))
    }

    pub(crate) fn flatten(&self) -> SysResult<()> {
        // SAFETY: valid image.
        rc(unsafe { rbd_flatten(self.ptr) }).map(drop)
    }

    /// Parent of a clone; `ENOENT` if the image has none.
    pub(crate) fn parent(&self) -> SysResult<RawParent> {
        let mut img = rbd_linked_image_spec_t {
            pool_id: 0,
            pool_name: ptr::null_mut(),
            pool_namespace: ptr::null_mut(),
            image_id: ptr::null_mut(),
            image_name: ptr::null_mut(),
            trash: false,
        };
        let mut snap = rbd_snap_spec_t {
            id: 0,
            namespace_type: 0,
            name: ptr::null_mut(),
        };
        // SAFETY: valid image and out-structs.
        rc(unsafe { rbd_get_parent(self.ptr, &mut img, &mut snap) })?;
        let out = RawParent {
            pool_id: img.pool_id,
            pool_name: copy_cstr(img.pool_name),
            pool_namespace: copy_cstr(img.pool_namespace),
            image_id: copy_cstr(img.image_id),
            image_name: copy_cstr(img.image_name),
            trash: img.trash,
            snap_id: snap.id,
            snap_namespace_type: snap.namespace_type,
            snap_name: copy_cstr(snap.name),
        };
        // SAFETY: on success librbd filled both structs with strdup'ed
        // strings; these free them.
        unsafe {
            rbd_linked_image_spec_cleanup(&mut img);
            rbd_snap_spec_cleanup(&mut snap);
        }
        Ok(out)
    }

    pub(crate) fn read(&self, ofs: u64, buf: &mut [u8]) -> SysResult<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
        let r = unsafe { rbd_read(self.ptr, ofs, buf.len(), buf.as_mut_ptr().cast()) };
        ssize(r)
    }

    pub(crate) fn write(&self, ofs: u64, buf: &[u8]) -> SysResult<usize> {
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
        let r = unsafe { rbd_write(self.ptr, ofs, buf.len(), buf.as_ptr().cast()) };
        ssize(r)
    }

    pub(crate) fn discard(&self, ofs: u64, len: u64) -> SysResult<()> {
        // SAFETY: valid image.
        rc(unsafe { rbd_discard(self.ptr, ofs, len) }).map(drop)
    }

    pub(crate) fn write_zeroes(&self, ofs: u64, len: usize) -> SysResult<usize> {
        // SAFETY: valid image; no buffers are passed.
        let r = unsafe { rbd_write_zeroes(self.ptr, ofs, len, 0, 0) };
        ssize(r)
    }

    pub(crate) fn flush(&self) -> SysResult<()> {
        // SAFETY: valid image.
        rc(unsafe { rbd_flush(self.ptr) }).map(drop)
    }

    /// `(addr, id, cookie)` of every watcher of the image header.
    pub(crate) fn watchers(&self) -> SysResult<Vec<(String, i64, u64)>> {
        let mut cap: size_t = 8;
        for _ in 0..MAX_TRIES {
            let mut ws: Vec<rbd_image_watcher_t> = (0..cap)
                .map(|_| rbd_image_watcher_t {
                    addr: ptr::null_mut(),
                    id: 0,
                    cookie: 0,
                })
                .collect();
            let mut n = cap;
            // SAFETY: `ws` has room for `n` entries.
            let r = unsafe { rbd_watchers_list(self.ptr, ws.as_mut_ptr(), &mut n) };
            if r == -libc::ERANGE {
                let want = n.max(cap.saturating_mul(2)).saturating_add(4);
                if want > MAX_BUF {
                    return Err(libc::ERANGE);
                }
                cap = want;
                continue;
            }
            rc(r)?;
            let n = n.min(cap);
            let out = ws[..n]
                .iter()
                .map(|w| (copy_cstr(w.addr), w.id, w.cookie))
                .collect();
            // SAFETY: librbd filled `n` entries with strdup'ed addresses.
            unsafe { rbd_watchers_list_cleanup(ws.as_mut_ptr(), n) };
            return Ok(out);
        }
        Err(libc::ERANGE)
    }

    /// `(lock mode, owners)` of the exclusive lock.
    pub(crate) fn lock_owners(&self) -> SysResult<(i32, Vec<String>)> {
        let mut cap: size_t = 4;
        for _ in 0..MAX_TRIES {
            let mut owners: Vec<*mut c_char> = vec![ptr::null_mut(); cap];
            let mut n = cap;
            let mut mode: c_int = 0;
            // SAFETY: `owners` has room for `n` entries.
            let r =
                unsafe { rbd_lock_get_owners(self.ptr, &mut mode, owners.as_mut_ptr(), &mut n) };
            if r == -libc::ERANGE {
                let want = n.max(cap.saturating_mul(2)).saturating_add(4);
                if want > MAX_BUF {
                    return Err(libc::ERANGE);
                }
                cap = want;
                continue;
            }
            rc(r)?;
            let n = n.min(cap);
            let out = owners[..n].iter().map(|&p| copy_cstr(p)).collect();
            // SAFETY: librbd filled `n` entries with strdup'ed strings.
            unsafe { rbd_lock_get_owners_cleanup(owners.as_mut_ptr(), n) };
            return Ok((mode, out));
        }
        Err(libc::ERANGE)
    }

    /// Breaks the exclusive lock held by `owner` (an address from `lock_owners`);
    /// librbd blocklists the owner first.
    pub(crate) fn lock_break(&self, owner: &str) -> SysResult<()> {
        let o = cstr(owner)?;
        // SAFETY: valid image and C string; 0 is RBD_LOCK_MODE_EXCLUSIVE.
        rc(unsafe { rbd_lock_break(self.ptr, 0, o.as_ptr()) }).map(drop)
    }
}

fn ssize(r: ssize_t) -> SysResult<usize> {
    if r < 0 {
        Err(i32::try_from(r.saturating_neg()).unwrap_or(libc::EIO))
    } else {
        usize::try_from(r).map_err(|_| libc::EIO)
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        // SAFETY: we own the image handle; closed exactly once while the
        // cluster is still alive.
        let r = unsafe { rbd_close(self.ptr) };
        if r < 0 {
            tracing::warn!(errno = -r, "rbd_close failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::{offset_of, size_of};

    /// Layouts measured with gcc against the installed pacific headers
    /// (x86_64): sizeof/offsetof of each struct we mirror.
    #[test]
    fn struct_layouts_match_c() {
        assert_eq!(size_of::<rbd_image_info_t>(), 160);
        assert_eq!(offset_of!(rbd_image_info_t, order), 24);
        assert_eq!(offset_of!(rbd_image_info_t, block_name_prefix), 28);
        assert_eq!(offset_of!(rbd_image_info_t, parent_pool), 56);
        assert_eq!(offset_of!(rbd_image_info_t, parent_name), 64);
        assert_eq!(size_of::<rbd_image_spec_t>(), 16);
        assert_eq!(size_of::<rbd_linked_image_spec_t>(), 48);
        assert_eq!(offset_of!(rbd_linked_image_spec_t, trash), 40);
        assert_eq!(size_of::<rbd_snap_spec_t>(), 24);
        assert_eq!(offset_of!(rbd_snap_spec_t, name), 16);
        assert_eq!(size_of::<rbd_snap_info_t>(), 24);
        assert_eq!(size_of::<rbd_image_watcher_t>(), 24);
    }

    #[test]
    fn grow_string_stops() {
        let mut calls = 0;
        let r = grow_string(16, |_, _| {
            calls += 1;
            -libc::ERANGE
        });
        assert_eq!(r.err(), Some(libc::ERANGE));
        assert!(calls < 32, "grow loop must be bounded, made {calls} calls");
    }

    #[test]
    fn grow_string_grows_until_fits() {
        let want = b"0123456789abcdef0123456789abcdef0123456789\0";
        let r = grow_string(16, |buf, len| {
            if len < want.len() {
                return -libc::ERANGE;
            }
            // SAFETY: buf is valid for len >= want.len() bytes.
            unsafe { std::ptr::copy_nonoverlapping(want.as_ptr().cast(), buf, want.len()) };
            0
        });
        assert_eq!(
            r.as_deref(),
            Ok("0123456789abcdef0123456789abcdef0123456789")
        );
    }

    #[test]
    fn interior_nul_is_einval() {
        assert_eq!(cstr("a\0b").err(), Some(libc::EINVAL));
    }
}
