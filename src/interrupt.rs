//! SIGINT / SIGTERM: a clean stop instead of a half-written output.
//!
//! `install` (called by the CLI) starts a thread that receives the signals. The first one sets a
//! flag that the long-running code polls between steps (`check`): it returns
//! `FaspError::Interrupted`, the temporary output is dropped (and so removed) on the way up, and
//! the CLI exits with 128 + the signal's number (130 for SIGINT, 143 for SIGTERM).
//!
//! A step that does not poll (one large layer on the CPU can take minutes) must not make the
//! process hang: if the process is still running `GRACE` after the first signal, or at once on a
//! second one, the signal thread removes the registered temporary directories itself and exits.
//! Anything a forced exit could not remove is a stale leftover that the next run on the same
//! `--out` cleans up (`crate::output`).

use crate::error::{FaspError, Result};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// How long a signalled process may take to reach a check before it is stopped by force;
/// `FASP_INTERRUPT_GRACE_MS` overrides it (tests).
const GRACE: Duration = Duration::from_secs(10);

/// The first signal received (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// What the process is doing, for the message.
static STAGE: Mutex<String> = Mutex::new(String::new());
/// Temporary directories (and lock files) to remove on a forced exit.
static TEMP_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Held across steps a forced exit must not cut in half (renaming the output into place).
static CRITICAL: Mutex<()> = Mutex::new(());

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The signal's name.
pub fn signal_name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// The conventional exit status after `sig`: 128 + its number.
pub fn exit_code(sig: i32) -> u8 {
    (128 + sig).clamp(0, 255) as u8
}

/// Receives SIGINT and SIGTERM from now on (see the module comment). Call once, from `main`.
pub fn install() -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    let grace = std::env::var("FASP_INTERRUPT_GRACE_MS").ok().and_then(|v| v.parse().ok()).map_or(GRACE, Duration::from_millis);
    std::thread::Builder::new().name("signals".into()).spawn(move || {
        for sig in signals.forever() {
            if SIGNAL.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                let _ = std::thread::Builder::new().name("signal-grace".into()).spawn(move || {
                    std::thread::sleep(grace);
                    force_exit(sig, "the current step did not finish in time");
                });
            } else {
                force_exit(SIGNAL.load(Ordering::SeqCst), "a second signal");
            }
        }
    })?;
    Ok(())
}

/// Removes the registered temporary directories and exits without waiting for the main thread.
fn force_exit(sig: i32, why: &str) -> ! {
    // never released: the process ends below
    std::mem::forget(lock(&CRITICAL));
    let dirs = std::mem::take(&mut *lock(&TEMP_DIRS));
    for d in &dirs {
        // a writer may still be creating files in it: retry a few times
        for _ in 0..5 {
            let r = if d.is_dir() { std::fs::remove_dir_all(d) } else { std::fs::remove_file(d) };
            match r {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => std::thread::sleep(Duration::from_millis(20)),
                _ => break,
            }
        }
    }
    let removed = if dirs.is_empty() { String::new() } else { "; removed the unfinished output".to_string() };
    eprintln!("error: interrupted by {} while {} (stopped at once: {why}){removed}", signal_name(sig), stage_text());
    std::process::exit(exit_code(sig).into())
}

fn stage_text() -> String {
    let s = lock(&STAGE);
    if s.is_empty() {
        "running".into()
    } else {
        s.clone()
    }
}

/// Runs `f` so that a forced exit cannot happen in the middle of it.
pub fn critical<T>(f: impl FnOnce() -> T) -> T {
    let _guard = lock(&CRITICAL);
    f()
}

/// Records what the process is doing now ("pruning layer 3 of 30"), for the interrupt message.
pub fn stage(what: impl Into<String>) {
    *lock(&STAGE) = what.into();
}

/// The signal received so far, if any.
pub fn received() -> Option<i32> {
    match SIGNAL.load(Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

/// `Err(FaspError::Interrupted)` once a signal has arrived. Poll it between steps.
pub fn check() -> Result<()> {
    match received() {
        None => Ok(()),
        Some(sig) => Err(FaspError::Interrupted { signal: signal_name(sig), code: exit_code(sig), during: stage_text() }),
    }
}

/// Registers a temporary directory (or a lock file) for removal on a forced exit.
pub fn register_temp(path: &Path) {
    lock(&TEMP_DIRS).push(path.to_path_buf());
}

/// Undoes `register_temp` (the directory was removed or renamed into place).
pub fn unregister_temp(path: &Path) {
    lock(&TEMP_DIRS).retain(|p| p != path);
}
