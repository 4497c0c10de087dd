//! Compiles the BPF C programs in `bpf/` with clang and generates the Rust view of
//! `bpf/include/clovisor_abi.h` with bindgen, both into `OUT_DIR`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Derives added to every ABI struct so `capture::raw` can read them from bytes safely.
#[derive(Debug)]
struct ZerocopyDerives;

impl bindgen::callbacks::ParseCallbacks for ZerocopyDerives {
    fn add_derives(&self, info: &bindgen::callbacks::DeriveInfo<'_>) -> Vec<String> {
        if info.name.starts_with("clovisor_") {
            [
                "zerocopy::FromBytes",
                "zerocopy::IntoBytes",
                "zerocopy::KnownLayout",
                "zerocopy::Immutable",
            ]
            .map(String::from)
            .to_vec()
        } else {
            Vec::new()
        }
    }
}

fn main() -> Result<()> {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?);
    let bpf_dir = manifest
        .parent()
        .context("probe crate has no parent directory")?
        .join("bpf");
    let include_dir = bpf_dir.join("include");
    let out_dir = PathBuf::from(env::var("OUT_DIR").context("OUT_DIR")?);
    let multiarch = multiarch_include();
    let arch = bpf_target_arch()?;

    let mut headers = Vec::new();
    for entry in std::fs::read_dir(&include_dir)
        .with_context(|| format!("reading {}", include_dir.display()))?
    {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "h") {
            headers.push(path);
        }
    }
    for h in &headers {
        println!("cargo:rerun-if-changed={}", h.display());
    }

    // The directories too, so a new program or header is picked up.
    println!("cargo:rerun-if-changed={}", bpf_dir.display());
    println!("cargo:rerun-if-changed={}", include_dir.display());
    let mut sources = Vec::new();
    for entry in
        std::fs::read_dir(&bpf_dir).with_context(|| format!("reading {}", bpf_dir.display()))?
    {
        let path = entry?.path();
        if path.to_string_lossy().ends_with(".bpf.c") {
            sources.push(path);
        }
    }
    sources.sort();
    for src in &sources {
        println!("cargo:rerun-if-changed={}", src.display());
        compile_bpf(src, &include_dir, multiarch.as_deref(), arch, &out_dir)?;
    }

    let abi = include_dir.join("clovisor_abi.h");
    let mut builder = bindgen::Builder::default()
        .header(abi.to_string_lossy())
        .allowlist_type("clovisor_.*")
        .allowlist_var("CLOVISOR_.*")
        .prepend_enum_name(false)
        // No derive_default: bindgen would implement it with unsafe zeroing for the large
        // payload array; zerocopy's FromZeros gives a safe `new_zeroed()` instead.
        .derive_default(false)
        .layout_tests(true)
        .parse_callbacks(Box::new(ZerocopyDerives));
    if let Some(dir) = &multiarch {
        builder = builder.clang_arg(format!("-I{}", dir.display()));
    }
    let bindings = builder
        .generate()
        .context("bindgen on clovisor_abi.h failed (install clang libbpf-dev libclang-dev)")?;
    bindings
        .write_to_file(out_dir.join("clovisor_abi.rs"))
        .context("writing clovisor_abi.rs")?;
    Ok(())
}

/// `/usr/include/<multiarch>`, where `asm/types.h` lives on Debian.
fn multiarch_include() -> Option<PathBuf> {
    let out = Command::new("gcc").arg("-print-multiarch").output().ok()?;
    let triple = String::from_utf8(out.stdout).ok()?;
    let dir = Path::new("/usr/include").join(triple.trim());
    dir.is_dir().then_some(dir)
}

/// The `__TARGET_ARCH_*` define the socket program needs to read syscall arguments from
/// `struct pt_regs` (the layout is per architecture).
fn bpf_target_arch() -> Result<&'static str> {
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH")?;
    match arch.as_str() {
        "x86_64" => Ok("x86"),
        "aarch64" => Ok("arm64"),
        other => bail!("no BPF syscall-argument layout for target architecture {other}"),
    }
}

/// The BPF instruction set a program is compiled for. The tc program needs v3 for its atomic
/// compare-and-exchange (kernel 5.12+; ring buffers already need 5.8). The socket program stays
/// on v1: with v3 clang 14 spills some registers in 32 bits, which the verifier refuses
/// ("invalid size of register spill").
fn bpf_cpu(program: &str) -> &'static str {
    match program {
        "tc_capture" => "v3",
        _ => "v1",
    }
}

fn compile_bpf(
    src: &Path,
    include: &Path,
    multiarch: Option<&Path>,
    arch: &str,
    out_dir: &Path,
) -> Result<()> {
    let name = src
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_suffix(".bpf.c"))
        .context("BPF source name")?;
    let obj = out_dir.join(format!("{name}.bpf.o"));
    let mut cmd = Command::new("clang");
    cmd.args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-mcpu={}", bpf_cpu(name)))
        .arg(format!("-I{}", include.display()))
        .arg(format!("-D__TARGET_ARCH_{arch}"))
        .arg("-I/usr/include");
    if let Some(dir) = multiarch {
        cmd.arg(format!("-I{}", dir.display()));
    }
    cmd.arg("-c").arg(src).arg("-o").arg(&obj);
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "clang not found: install clang libbpf-dev libclang-dev to build the BPF programs"
            )
        }
        Err(e) => return Err(e).context("running clang"),
    };
    if !output.status.success() {
        bail!(
            "clang failed on {} (install clang libbpf-dev libclang-dev):\n{}",
            src.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}
