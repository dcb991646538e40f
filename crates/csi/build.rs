//! Build script for `ferroceph-csi`.
//!
//! 1. Runs `protoc` (from `$PROTOC`, else `protoc` on `$PATH`, e.g. Debian's
//!    `/usr/bin/protoc`) on `proto/csi.proto` and keeps the raw
//!    `FileDescriptorSet` (with imports, source info and custom options) as
//!    `$OUT_DIR/csi_descriptor.bin`.
//! 2. Scans that raw descriptor for fields carrying the `(csi.v1.csi_secret)`
//!    option (extension 1059 on `FieldOptions`). prost drops unknown options
//!    when decoding, so the scan walks the protobuf wire format by hand.
//! 3. Generates prost messages + tonic clients/servers for every service,
//!    with `skip_debug` on each message that has a secret field.
//! 4. Writes `$OUT_DIR/csi.v1.redacted_debug.rs`: a `Debug` impl for each of
//!    those messages that prints every field normally except the secret ones,
//!    which go through `crate::redact::Redacted`.
//! 5. Generates proto3-JSON serde impls with pbjson-build.

use std::collections::{BTreeMap, BTreeSet};
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use prost::Message as _;
use prost_types::{DescriptorProto, FileDescriptorSet};

/// Field number of the `csi_secret` extension of `google.protobuf.FieldOptions`.
const CSI_SECRET_EXT: u64 = 1059;
/// The package whose generated code lives in `csi::v1`.
const PACKAGE: &str = "csi.v1";

type BoxError = Box<dyn std::error::Error>;

fn main() -> Result<(), BoxError> {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let proto_dir = manifest_dir.join("proto");
    let proto_file = proto_dir.join("csi.proto");

    println!("cargo:rerun-if-changed={}", proto_file.display());
    println!("cargo:rerun-if-env-changed=PROTOC");
    println!("cargo:rerun-if-env-changed=PROTOC_INCLUDE");

    // 1. protoc -> raw descriptor set.
    let descriptor_path = out_dir.join("csi_descriptor.bin");
    run_protoc(&proto_file, &proto_dir, &descriptor_path)?;
    let raw = fs::read(&descriptor_path)?;

    // 2. Find secret fields: full message name -> set of field numbers.
    let secrets = find_secret_fields(&raw)?;
    if secrets.is_empty() {
        return Err("no csi_secret fields found in csi.proto; descriptor scan is broken".into());
    }

    // 3. prost + tonic code generation.
    let fds = FileDescriptorSet::decode(raw.as_slice())?;
    let skip: Vec<String> = secrets.keys().cloned().collect();
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Unimplemented RPCs answer UNIMPLEMENTED without a hand-written stub.
        .generate_default_stubs(true)
        .out_dir(&out_dir)
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .skip_debug(skip)
        .compile_fds(fds.clone())?;

    // 4. Redacting Debug impls.
    let debug_src = redacted_debug_impls(&fds, &secrets)?;
    fs::write(out_dir.join("csi.v1.redacted_debug.rs"), debug_src)?;

    // 5. serde (proto3 JSON mapping) via pbjson.
    pbjson_build::Builder::new()
        .out_dir(&out_dir)
        .register_descriptors(&raw)?
        .build(&[".csi.v1"])?;

    Ok(())
}

fn run_protoc(proto_file: &Path, proto_dir: &Path, out: &Path) -> Result<(), BoxError> {
    let protoc = env::var_os("PROTOC")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("protoc"));
    let mut cmd = Command::new(&protoc);
    cmd.arg("--include_imports")
        .arg("--include_source_info")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg(format!("--proto_path={}", proto_dir.display()));
    // Well-known types: explicit PROTOC_INCLUDE wins; otherwise protoc finds
    // them next to its binary (Debian: /usr/include/google/protobuf).
    if let Some(inc) = env::var_os("PROTOC_INCLUDE") {
        cmd.arg(format!("--proto_path={}", PathBuf::from(inc).display()));
    }
    cmd.arg(proto_file);
    let output = cmd.output().map_err(|e| {
        format!(
            "failed to run protoc ({}): {e}; install protobuf-compiler or set PROTOC",
            protoc.display()
        )
    })?;
    if !output.status.success() {
        return Err(format!(
            "protoc failed: {}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Minimal protobuf wire-format reader (just enough to walk descriptors).
// ---------------------------------------------------------------------------

enum Value<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Other,
}

fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, BoxError> {
    let mut result = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        result |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(result);
        }
    }
    Err("varint too long".into())
}

/// Split one encoded message into `(field number, value)` pairs.
fn fields(buf: &[u8]) -> Result<Vec<(u64, Value<'_>)>, BoxError> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < buf.len() {
        let key = read_varint(buf, &mut pos)?;
        let (num, wire) = (key >> 3, key & 7);
        let value = match wire {
            0 => Value::Varint(read_varint(buf, &mut pos)?),
            1 => {
                pos += 8;
                Value::Other
            }
            2 => {
                let len = usize::try_from(read_varint(buf, &mut pos)?)?;
                let end = pos.checked_add(len).ok_or("length overflow")?;
                let bytes = buf.get(pos..end).ok_or("truncated field")?;
                pos = end;
                Value::Bytes(bytes)
            }
            5 => {
                pos += 4;
                Value::Other
            }
            w => return Err(format!("unsupported wire type {w}").into()),
        };
        out.push((num, value));
    }
    if pos != buf.len() {
        return Err("truncated message".into());
    }
    Ok(out)
}

fn string_field(buf: &[u8], num: u64) -> Result<Option<String>, BoxError> {
    for (n, v) in fields(buf)? {
        if let (true, Value::Bytes(b)) = (n == num, v) {
            return Ok(Some(String::from_utf8(b.to_vec())?));
        }
    }
    Ok(None)
}

/// Returns `.pkg.Message[.Nested]` -> field numbers marked `csi_secret = true`.
fn find_secret_fields(raw: &[u8]) -> Result<BTreeMap<String, BTreeSet<i32>>, BoxError> {
    let mut found = BTreeMap::new();
    // FileDescriptorSet.file = 1
    for (n, v) in fields(raw)? {
        let (1, Value::Bytes(file)) = (n, v) else {
            continue;
        };
        let package = string_field(file, 2)?.unwrap_or_default();
        let prefix = if package.is_empty() {
            String::new()
        } else {
            format!(".{package}")
        };
        // FileDescriptorProto.message_type = 4
        for (n, v) in fields(file)? {
            if let (4, Value::Bytes(msg)) = (n, v) {
                scan_message(msg, &prefix, &mut found)?;
            }
        }
    }
    Ok(found)
}

fn scan_message(
    msg: &[u8],
    prefix: &str,
    found: &mut BTreeMap<String, BTreeSet<i32>>,
) -> Result<(), BoxError> {
    let name = string_field(msg, 1)?.ok_or("message without a name")?;
    let full = format!("{prefix}.{name}");
    for (n, v) in fields(msg)? {
        match (n, v) {
            // DescriptorProto.field = 2
            (2, Value::Bytes(field)) => {
                let mut number = None;
                let mut secret = false;
                for (fnum, fv) in fields(field)? {
                    match (fnum, fv) {
                        // FieldDescriptorProto.number = 3
                        (3, Value::Varint(x)) => number = Some(i32::try_from(x)?),
                        // FieldDescriptorProto.options = 8
                        (8, Value::Bytes(opts)) => {
                            for (onum, ov) in fields(opts)? {
                                if let (CSI_SECRET_EXT, Value::Varint(x)) = (onum, ov) {
                                    secret = x != 0;
                                }
                            }
                        }
                        _ => {}
                    }
                }
                if secret {
                    let number = number.ok_or("secret field without a number")?;
                    found.entry(full.clone()).or_default().insert(number);
                }
            }
            // DescriptorProto.nested_type = 3
            (3, Value::Bytes(nested)) => scan_message(nested, &full, found)?,
            _ => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Debug impl generation.
// ---------------------------------------------------------------------------

/// prost's naming: snake_case field/module idents with keyword escaping.
fn rust_ident(name: &str) -> String {
    const RAW: &[&str] = &[
        "as", "break", "const", "continue", "else", "enum", "false", "fn", "for", "if", "impl",
        "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return", "static",
        "struct", "trait", "true", "type", "unsafe", "use", "where", "while", "dyn", "abstract",
        "become", "box", "do", "final", "macro", "override", "priv", "typeof", "unsized",
        "virtual", "yield", "async", "await", "try", "gen",
    ];
    const SUFFIX: &[&str] = &["self", "super", "extern", "crate", "Self"];
    let snake = to_snake(name);
    if RAW.contains(&snake.as_str()) {
        format!("r#{snake}")
    } else if SUFFIX.contains(&snake.as_str()) {
        format!("{snake}_")
    } else {
        snake
    }
}

fn to_snake(name: &str) -> String {
    let mut out = String::new();
    let mut prev_lower = false;
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            if prev_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            prev_lower = false;
        } else {
            out.push(c);
            prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        }
    }
    out
}

fn redacted_debug_impls(
    fds: &FileDescriptorSet,
    secrets: &BTreeMap<String, BTreeSet<i32>>,
) -> Result<String, BoxError> {
    let mut src = String::from(
        "// @generated by ferroceph-csi build.rs: Debug impls that redact csi_secret fields.\n",
    );
    let mut names = Vec::new();
    for file in &fds.file {
        if file.package() != PACKAGE {
            continue;
        }
        let prefix = format!(".{PACKAGE}");
        for msg in &file.message_type {
            emit_message(msg, &prefix, &[], secrets, &mut src, &mut names)?;
        }
    }
    if names.len() != secrets.len() {
        return Err(format!(
            "csi_secret fields outside package {PACKAGE} are not supported: {:?}",
            secrets.keys().collect::<Vec<_>>()
        )
        .into());
    }
    writeln!(
        src,
        "\n/// Fully qualified proto names of the messages whose `Debug` redacts secrets.\n\
         pub const REDACTED_MESSAGES: &[&str] = &["
    )?;
    for n in &names {
        writeln!(src, "    {n:?},")?;
    }
    writeln!(src, "];")?;
    Ok(src)
}

fn emit_message(
    msg: &DescriptorProto,
    prefix: &str,
    modules: &[String],
    secrets: &BTreeMap<String, BTreeSet<i32>>,
    src: &mut String,
    names: &mut Vec<String>,
) -> Result<(), BoxError> {
    let full = format!("{prefix}.{}", msg.name());
    if let Some(secret_numbers) = secrets.get(&full) {
        let rust_path = modules
            .iter()
            .cloned()
            .chain(std::iter::once(msg.name().to_string()))
            .collect::<Vec<_>>()
            .join("::");
        writeln!(src, "\nimpl ::core::fmt::Debug for {rust_path} {{")?;
        writeln!(
            src,
            "    fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {{"
        )?;
        writeln!(src, "        let mut s = f.debug_struct({:?});", msg.name())?;
        let mut seen_oneofs = BTreeSet::new();
        for field in &msg.field {
            // Real oneofs become a single Option<enum> field named after the oneof.
            if let (Some(idx), false) = (field.oneof_index, field.proto3_optional()) {
                let oneof = msg
                    .oneof_decl
                    .get(usize::try_from(idx)?)
                    .ok_or("bad oneof index")?
                    .name()
                    .to_string();
                if secret_numbers.contains(&field.number()) {
                    return Err(
                        format!("csi_secret inside oneof {full}.{oneof} unsupported").into(),
                    );
                }
                if seen_oneofs.insert(oneof.clone()) {
                    let id = rust_ident(&oneof);
                    writeln!(src, "        s.field({oneof:?}, &self.{id});")?;
                }
                continue;
            }
            let id = rust_ident(field.name());
            if secret_numbers.contains(&field.number()) {
                writeln!(
                    src,
                    "        s.field({:?}, &crate::redact::Redacted(&self.{id}));",
                    field.name()
                )?;
            } else {
                writeln!(src, "        s.field({:?}, &self.{id});", field.name())?;
            }
        }
        writeln!(src, "        s.finish()")?;
        writeln!(src, "    }}\n}}")?;
        names.push(full.trim_start_matches('.').to_string());
    }
    let mut nested_modules = modules.to_vec();
    nested_modules.push(rust_ident(msg.name()));
    for nested in &msg.nested_type {
        emit_message(nested, &full, &nested_modules, secrets, src, names)?;
    }
    Ok(())
}
