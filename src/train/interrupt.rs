//! Stop signals: Ctrl-C (SIGINT) and SIGTERM, which Slurm, Kubernetes and `timeout` send
//! on preemption. The first one of either kind sets a flag the training loop checks after
//! every step (it then saves a checkpoint and returns); a second one exits at once.
//! Either way the exit status is the shell's 128 + signal number (130, 143).

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::signal::unix::{Signal, SignalKind, signal};

/// Signal numbers (the same on Linux and macOS).
pub const SIGINT: i32 = 2;
pub const SIGTERM: i32 = 15;

/// Exit status of a run stopped by Ctrl-C (128 + SIGINT, the shell convention).
pub const EXIT_INTERRUPTED: i32 = 128 + SIGINT;

/// The first stop signal received (0: none yet).
static RECEIVED: AtomicI32 = AtomicI32::new(0);

/// The first stop signal received, if any.
pub fn received() -> Option<i32> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        n => Some(n),
    }
}

/// The exit status for a run stopped by `signal` (128 + its number).
pub fn exit_status(signal: i32) -> i32 {
    128 + signal
}

/// How a signal is named to the user.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        SIGINT => "Ctrl-C",
        SIGTERM => "SIGTERM",
        _ => "a signal",
    }
}

/// The process-wide stop flag, installing the SIGINT and SIGTERM handlers on first use.
///
/// The handlers are tokio's on a small thread of their own, so they work whatever the
/// caller is doing (the loop is synchronous).
pub fn stop_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let set = flag.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("stop-signals".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(_) => return,
                };
                runtime.block_on(async move {
                    // Register before reporting ready: a signal right after start is caught.
                    let (Ok(mut int), Ok(mut term)) = (
                        signal(SignalKind::interrupt()),
                        signal(SignalKind::terminate()),
                    ) else {
                        return;
                    };
                    let _ = ready_tx.send(());
                    let first = next_signal(&mut int, &mut term).await;
                    RECEIVED.store(first, Ordering::SeqCst);
                    eprintln!(
                        "\n{}: finishing the current step and saving a checkpoint \
                         (a second Ctrl-C or SIGTERM quits at once)",
                        signal_name(first)
                    );
                    set.store(true, Ordering::SeqCst);
                    let second = next_signal(&mut int, &mut term).await;
                    std::process::exit(exit_status(second));
                });
            })
            .expect("spawn the signal thread");
        let _ = ready_rx.recv();
        flag
    })
    .clone()
}

async fn next_signal(int: &mut Signal, term: &mut Signal) -> i32 {
    tokio::select! {
        _ = int.recv() => SIGINT,
        _ = term.recv() => SIGTERM,
    }
}
