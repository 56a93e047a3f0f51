//! Ctrl-C: the first one sets a flag the training loop checks after every step (it then
//! saves a checkpoint and returns); a second one exits at once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

/// Exit status of a run stopped by Ctrl-C (128 + SIGINT, the shell convention).
pub const EXIT_INTERRUPTED: i32 = 130;

/// The process-wide Ctrl-C flag, installing the handler on first use.
///
/// The handler is tokio's (`tokio::signal::ctrl_c`) on a small thread of its own, so it
/// works whatever the caller is doing (the loop is synchronous).
pub fn ctrl_c_flag() -> Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = Arc::new(AtomicBool::new(false));
        let set = flag.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("ctrl-c".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                    Ok(rt) => rt,
                    Err(_) => return,
                };
                runtime.block_on(async move {
                    // Register before reporting ready: a Ctrl-C right after start is caught.
                    let mut signals = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) {
                        Ok(s) => s,
                        Err(_) => return,
                    };
                    let _ = ready_tx.send(());
                    signals.recv().await;
                    eprintln!("\ninterrupted: finishing the current step and saving a checkpoint (Ctrl-C again to quit now)");
                    set.store(true, Ordering::SeqCst);
                    signals.recv().await;
                    std::process::exit(EXIT_INTERRUPTED);
                });
            })
            .expect("spawn the Ctrl-C thread");
        let _ = ready_rx.recv();
        flag
    })
    .clone()
}
