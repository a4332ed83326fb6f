//! Compiles every `cuda/*.cu` to PTX in `OUT_DIR` and writes `OUT_DIR/ptx.rs`, which `src/kernels.rs`
//! includes. Each `cuda/NAME.cu` becomes `pub const NAME: &str` (upper-cased) holding its PTX, plus
//! `ALL` (name, ptx) pairs, `KERNELS_BUILT`, `PTX_ARCH` and `NVCC_VERSION`.
//!
//! nvcc is looked up in this order: `$NVCC`, `$CUDA_HOME/bin/nvcc`, `nvcc` on `PATH`, then the project-local
//! toolkit that `scripts/setup-cuda.sh` installs under `<crate>/.cuda/`. Without nvcc (or with
//! `FASP_NO_CUDA=1`) the build still succeeds: it warns, the constants are empty strings and
//! `KERNELS_BUILT` is false. An nvcc compile error fails the build with nvcc's message.
//! `CUDA_COMPUTE_CAP` (default 80) selects `-arch=compute_$CAP`. `FASP_PTX_VERSION` (default 8.0, or
//! `native`) sets the PTX ISA version in the header so drivers older than nvcc's can load it; the result is
//! checked with ptxas. This script never runs nvidia-smi.
//! When kernels are built it sets `cfg(fasp_kernels)`.
//!
//! Independently of nvcc, the same `cuda/*.cu` sources are compiled for the host with the `cc` crate
//! (C++20, `cuda/emu/cuda_emu.h` force-included, the bf16 stand-in from `cuda/emu/shim/`) into the static
//! library behind the emulated device (`--device emu`, src/backend/cuda/device/emu.rs). For every
//! `extern "C" __global__` kernel of a file it emits a trampoline (`FASP_EMU_KERNEL`) after the file's
//! source, and a registry of (module, name, trampoline, signature) in `OUT_DIR/emu/registry.cpp`.
//! `cuda/emu/test_kernels.cpp` (the per-family checks against double-precision references) goes in too.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The project-local toolkit, relative to the crate root (see scripts/setup-cuda.sh).
const LOCAL_CUDA_HOME: &str = ".cuda/pkgs/nvidia/cu13";
/// PTX ISA version written into the PTX header unless FASP_PTX_VERSION says otherwise (see below).
const DEFAULT_PTX_VERSION: &str = "8.0";

fn main() {
    println!("cargo::rustc-check-cfg=cfg(fasp_kernels)");
    for var in ["NVCC", "CUDA_HOME", "CUDA_COMPUTE_CAP", "FASP_NO_CUDA", "FASP_PTX_VERSION"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let cuda_dir = manifest_dir.join("cuda");
    println!("cargo:rerun-if-changed={}", cuda_dir.display());

    let mut sources = Vec::new();
    let emu_dir = cuda_dir.join("emu");
    for f in ["cuda_emu.h", "test_kernels.cpp", "fiber.cpp", "shim/cuda_bf16.h"] {
        println!("cargo:rerun-if-changed={}", emu_dir.join(f).display());
    }
    if let Ok(entries) = fs::read_dir(&cuda_dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            match path.extension().and_then(|e| e.to_str()) {
                Some("cu") => {
                    println!("cargo:rerun-if-changed={}", path.display());
                    sources.push(path);
                }
                Some("cuh") => println!("cargo:rerun-if-changed={}", path.display()),
                _ => {}
            }
        }
    }
    sources.sort();

    build_emulation(&cuda_dir, &out_dir, &sources);

    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".to_string());
    let cap = cap.trim().to_string();
    let valid_cap =
        !cap.is_empty() && cap.chars().next().is_some_and(|c| c.is_ascii_digit()) && cap.chars().all(|c| c.is_ascii_alphanumeric());
    // The ptxas check below needs sm_CAP too, so both spellings come from this one value.
    if !valid_cap {
        panic!("CUDA_COMPUTE_CAP={cap:?} is not a compute capability like 80, 89, 90 or 90a");
    }
    let arch = format!("compute_{cap}");

    let no_cuda = env::var("FASP_NO_CUDA").is_ok_and(|v| !v.is_empty() && v != "0");
    let (nvcc, notes) = if no_cuda { (None, vec!["FASP_NO_CUDA is set".to_string()]) } else { find_nvcc(&manifest_dir) };

    let Some(nvcc) = nvcc else {
        println!(
            "cargo:warning=fasp-engine: CUDA kernels NOT built ({}). The CPU backend works; to build the \
             GPU kernels run `scripts/setup-cuda.sh` (installs nvcc 13.0 from PyPI into .cuda/, no GPU needed) \
             or set NVCC / CUDA_HOME, then rebuild.",
            notes.join("; ")
        );
        write_ptx_rs(&out_dir, &sources, None, &arch, "");
        return;
    };
    println!("cargo:rerun-if-changed={}", nvcc.display());

    let version = Command::new(&nvcc)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().find(|l| l.contains("release")).map(|l| l.trim().to_string()))
        .unwrap_or_default();

    // Include flags: nvcc.profile of a toolkit-shaped tree adds them too; being explicit keeps a bare nvcc
    // (NVCC=... pointing into a wheel tree) working. CCCL goes in as -isystem so its headers stay quiet.
    let mut include_flags: Vec<String> = Vec::new();
    if let Some(home) = nvcc.parent().and_then(Path::parent) {
        let inc = home.join("include");
        if inc.is_dir() {
            include_flags.push(format!("-I{}", inc.display()));
            let cccl = inc.join("cccl");
            if cccl.is_dir() {
                include_flags.push("-isystem".to_string());
                include_flags.push(cccl.display().to_string());
            }
        }
    }

    // Compile all files concurrently (each nvcc is single-threaded); collect every failure.
    let children: Vec<_> = sources
        .iter()
        .map(|src| {
            let ptx = out_dir.join(ptx_file_name(src));
            let child = Command::new(&nvcc)
                .arg("--ptx")
                .arg("-O3")
                .arg("-lineinfo")
                .arg(format!("-arch={arch}"))
                .arg("-std=c++17")
                .args(&include_flags)
                .arg(format!("-I{}", cuda_dir.display()))
                .arg(src)
                .arg("-o")
                .arg(&ptx)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("failed to run {}: {e}", nvcc.display()));
            (src, child)
        })
        .collect();
    let mut failures = String::new();
    for (src, child) in children {
        let out = child.wait_with_output().expect("waiting for nvcc");
        let msg = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            let _ = writeln!(failures, "nvcc failed on {} ({}):\n{msg}", src.display(), out.status);
        } else {
            for line in msg.lines().filter(|l| !l.trim().is_empty()) {
                println!("cargo:warning=nvcc {}: {line}", src.file_name().unwrap().to_string_lossy());
            }
        }
    }
    if !failures.is_empty() {
        panic!("CUDA kernel compilation failed (nvcc {}):\n{failures}", nvcc.display());
    }

    // nvcc 13 stamps its PTX `.version 9.0`, which only drivers for CUDA >= 13.0 (r580+) can JIT. The code for
    // compute_80 uses nothing newer, so by default the header is lowered to FASP_PTX_VERSION (default 8.0: any
    // CUDA 12 driver) and checked with ptxas; FASP_PTX_VERSION=native keeps nvcc's header.
    // Targets newer than sm_90 need a newer ISA than the default: keep nvcc's header for them.
    let cap_num: u32 = cap.chars().take_while(|c| c.is_ascii_digit()).collect::<String>().parse().unwrap_or(0);
    let default_version = if cap_num >= 100 { "native" } else { DEFAULT_PTX_VERSION };
    let ptx_version = env::var("FASP_PTX_VERSION").unwrap_or_else(|_| default_version.to_string());
    let ptx_version = ptx_version.trim();
    if ptx_version != "native" {
        let ok = ptx_version
            .split_once('.')
            .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty() && (a.to_owned() + b).chars().all(|c| c.is_ascii_digit()));
        if !ok {
            panic!("FASP_PTX_VERSION={ptx_version:?}: expected MAJOR.MINOR (e.g. 8.0) or `native`");
        }
        let ptxas = nvcc.with_file_name("ptxas");
        let mut checks = Vec::new();
        for src in &sources {
            let path = out_dir.join(ptx_file_name(src));
            let text = fs::read_to_string(&path).expect("reading PTX");
            let text = set_ptx_version(&text, ptx_version).unwrap_or_else(|| panic!("no `.version` line in {}", path.display()));
            fs::write(&path, text).expect("writing PTX");
            if is_executable(&ptxas) {
                let child = Command::new(&ptxas)
                    .arg(format!("-arch=sm_{cap}"))
                    .arg(&path)
                    .arg("-o")
                    .arg("/dev/null")
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap_or_else(|e| panic!("failed to run {}: {e}", ptxas.display()));
                checks.push((src, child));
            }
        }
        if checks.is_empty() && !sources.is_empty() {
            println!("cargo:warning=fasp-engine: no ptxas beside nvcc; PTX lowered to .version {ptx_version} unchecked");
        }
        let mut failures = String::new();
        for (src, child) in checks {
            let out = child.wait_with_output().expect("waiting for ptxas");
            if !out.status.success() {
                let _ = writeln!(
                    failures,
                    "{}: {}{}",
                    src.display(),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        if !failures.is_empty() {
            panic!(
                "PTX does not assemble as .version {ptx_version} for sm_{cap}; set FASP_PTX_VERSION to a newer \
                 version or to `native`:\n{failures}"
            );
        }
    }

    println!("cargo:rustc-cfg=fasp_kernels");
    write_ptx_rs(&out_dir, &sources, Some(&out_dir), &arch, &version);
}

/// Replaces the PTX `.version X.Y` directive; None if there is none.
fn set_ptx_version(ptx: &str, version: &str) -> Option<String> {
    let mut out = String::with_capacity(ptx.len() + 8);
    let mut found = false;
    for line in ptx.split_inclusive('\n') {
        if !found && line.trim_start().starts_with(".version ") {
            found = true;
            out.push_str(".version ");
            out.push_str(version);
            out.push('\n');
        } else {
            out.push_str(line);
        }
    }
    found.then_some(out)
}

fn ptx_file_name(src: &Path) -> String {
    format!("{}.ptx", src.file_stem().unwrap().to_string_lossy())
}

fn const_name(src: &Path) -> String {
    src.file_stem()
        .unwrap()
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
        .collect()
}

/// Writes ptx.rs. `ptx_dir` is None when kernels were not built (every constant is then "").
fn write_ptx_rs(out_dir: &Path, sources: &[PathBuf], ptx_dir: Option<&Path>, arch: &str, version: &str) {
    let mut code = String::new();
    code.push_str("// @generated by build.rs: PTX of every cuda/*.cu file.\n");
    let _ = writeln!(code, "/// True when build.rs compiled the kernels (nvcc was found).");
    let _ = writeln!(code, "pub const KERNELS_BUILT: bool = {};", ptx_dir.is_some());
    let _ = writeln!(code, "/// The virtual architecture the PTX targets, e.g. \"compute_80\".");
    let _ = writeln!(code, "pub const PTX_ARCH: &str = {arch:?};");
    let _ = writeln!(code, "/// nvcc's release line, empty when kernels were not built.");
    let _ = writeln!(code, "pub const NVCC_VERSION: &str = {version:?};");
    let mut all = Vec::new();
    for src in sources {
        let name = const_name(src);
        let stem = src.file_stem().unwrap().to_string_lossy().to_string();
        let value = match ptx_dir {
            Some(dir) => format!("include_str!({:?})", dir.join(ptx_file_name(src)).display().to_string()),
            None => "\"\"".to_string(),
        };
        let _ = writeln!(code, "/// PTX of `cuda/{stem}.cu`.");
        let _ = writeln!(code, "pub const {name}: &str = {value};");
        all.push((stem, name));
    }
    let _ = writeln!(code, "/// (module name = file stem, PTX) for every kernel file.");
    code.push_str("pub const ALL: &[(&str, &str)] = &[\n");
    for (stem, name) in &all {
        let _ = writeln!(code, "    ({stem:?}, {name}),");
    }
    code.push_str("];\n");
    fs::write(out_dir.join("ptx.rs"), code).expect("writing ptx.rs");
}

/// Returns the nvcc to use, or None with the reasons each candidate was skipped.
fn find_nvcc(manifest_dir: &Path) -> (Option<PathBuf>, Vec<String>) {
    let mut notes = Vec::new();
    if let Some(v) = env::var_os("NVCC").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(&v);
        let resolved = if p.components().count() == 1 { search_path(&v) } else { Some(p.clone()) };
        match resolved.filter(|p| is_executable(p)) {
            Some(p) => return (Some(p), notes),
            None => notes.push(format!("NVCC={} is not an executable", p.display())),
        }
    }
    if let Some(home) = env::var_os("CUDA_HOME").filter(|v| !v.is_empty()) {
        let p = PathBuf::from(home).join("bin").join("nvcc");
        if is_executable(&p) {
            return (Some(p), notes);
        }
        notes.push(format!("{} not found", p.display()));
    }
    if let Some(p) = search_path(std::ffi::OsStr::new("nvcc")) {
        return (Some(p), notes);
    }
    notes.push("no nvcc on PATH".to_string());
    let local = manifest_dir.join(LOCAL_CUDA_HOME).join("bin").join("nvcc");
    if is_executable(&local) {
        return (Some(local), notes);
    }
    notes.push(format!("no {}", local.display()));
    (None, notes)
}

fn search_path(name: &std::ffi::OsStr) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path).map(|dir| dir.join(name)).find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    }
    #[cfg(not(unix))]
    {
        p.is_file()
    }
}

/// The `extern "C" __global__` kernel names of a `.cu` source, in order.
fn kernel_names(src: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find("__global__") {
        rest = &rest[i + "__global__".len()..];
        let mut t = rest.trim_start();
        let Some(after_void) = t.strip_prefix("void") else { continue };
        t = after_void.trim_start();
        if let Some(lb) = t.strip_prefix("__launch_bounds__") {
            // skip the balanced parentheses
            let mut depth = 0usize;
            let mut end = 0usize;
            for (j, c) in lb.char_indices() {
                match c {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            end = j + 1;
                            break;
                        }
                    }
                    _ => {}
                }
            }
            t = lb[end..].trim_start();
        }
        let name: String = t.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        if !name.is_empty() && t[name.len()..].trim_start().starts_with('(') {
            names.push(name);
        }
    }
    names
}

/// Compiles the kernels for the host (see the module docs) into `libfasp_emu.a`.
fn build_emulation(cuda_dir: &Path, out_dir: &Path, sources: &[PathBuf]) {
    let emu_out = out_dir.join("emu");
    fs::create_dir_all(&emu_out).expect("creating OUT_DIR/emu");
    let emu_dir = cuda_dir.join("emu");
    let mut units = Vec::new();
    let mut registry = String::from("// @generated by build.rs: the emulated kernels.\n");
    let mut entries = String::new();
    let mut count = 0usize;
    for src in sources {
        let text = fs::read_to_string(src).expect("reading a .cu file");
        let stem = src.file_stem().unwrap().to_string_lossy().to_string();
        let names = kernel_names(&text);
        let mut unit = format!("// @generated by build.rs\n#include {:?}\n", src.display().to_string());
        for n in &names {
            let _ = writeln!(unit, "FASP_EMU_KERNEL({n})");
            let _ = writeln!(
                registry,
                "extern \"C\" int fasp_emu_tramp_{n}(void**, const unsigned*, const unsigned*, char*, int);\n\
                 extern \"C\" emu::Signature fasp_emu_sig_{n}();"
            );
            let _ = writeln!(entries, "    {{\"{stem}\", \"{n}\", fasp_emu_tramp_{n}, fasp_emu_sig_{n}}},");
            count += 1;
        }
        let path = emu_out.join(format!("{stem}.cpp"));
        write_if_changed(&path, &unit);
        units.push(path);
    }
    let _ = write!(
        registry,
        "struct FaspEmuKernel {{ const char* module; const char* name;\n\
         int (*tramp)(void**, const unsigned*, const unsigned*, char*, int); emu::Signature (*sig)(); }};\n\
         static const FaspEmuKernel kEntries[] = {{\n{entries}    {{nullptr, nullptr, nullptr, nullptr}}\n}};\n\
         extern \"C\" int fasp_emu_kernel_count() {{ return {count}; }}\n\
         extern \"C\" const FaspEmuKernel* fasp_emu_kernel_at(int i) {{ return i >= 0 && i < {count} ? &kEntries[i] : nullptr; }}\n\
         extern \"C\" void fasp_emu_set_workers(int n) {{ if (n > 0) emu::worker_count() = n; }}\n"
    );
    let reg = emu_out.join("registry.cpp");
    write_if_changed(&reg, &registry);
    units.push(reg);
    units.push(emu_dir.join("test_kernels.cpp"));
    units.push(emu_dir.join("fiber.cpp"));

    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        .opt_level(2)
        .warnings(false)
        .flag("-include")
        .flag(emu_dir.join("cuda_emu.h").to_str().expect("utf-8 path"))
        .include(emu_dir.join("shim"))
        .include(cuda_dir)
        .include(&emu_dir)
        .flag_if_supported("-Wno-unknown-pragmas")
        .flag_if_supported("-fno-strict-aliasing")
        // the kernels are host code here; -ffp-contract=off keeps a*b+c unfused unless a kernel calls fmaf
        .flag_if_supported("-ffp-contract=off")
        .files(&units);
    build.compile("fasp_emu");
    println!("cargo:rustc-link-lib=pthread");
}

fn write_if_changed(path: &Path, text: &str) {
    if fs::read_to_string(path).ok().as_deref() != Some(text) {
        fs::write(path, text).expect("writing a generated file");
    }
}
