//! Stopping a training run by signal so that it can be saved: what a command-line front needs
//! (a Python front may install these too, or set `TrainConfig::interrupt` from its own handler).

/// Ctrl-C, SIGTERM and SIGHUP: the first sets `stop`, so that training stops after the submit
/// in flight and the run is saved rather than lost, and records which signal came; a second ends
/// the process at once, writing nothing.
pub struct Signals {
    /// Set by the first signal: the trainer's `TrainConfig::interrupt`.
    pub stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// 128 + the signal's number, as a shell reports a process the signal ended.
    pub code: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl Signals {
    /// Registers the handlers (a failure to register one is said on stderr, not fatal).
    pub fn install() -> Signals {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        use signal_hook::flag;
        let signals = Signals {
            stop: Default::default(),
            code: Default::default(),
        };
        for signal in [SIGINT, SIGTERM, SIGHUP] {
            let code = 128 + signal as usize;
            // The shutdown is registered first, so it sees the flag as the earlier signal left it.
            let installed =
                flag::register_conditional_shutdown(signal, code as i32, signals.stop.clone())
                    .and_then(|_| flag::register_usize(signal, signals.code.clone(), code))
                    .and_then(|_| flag::register(signal, signals.stop.clone()));
            if let Err(e) = installed {
                eprintln!("wgrad: signal {signal} will not save the run: {e}");
            }
        }
        signals
    }

    /// The exit code for a run the signal stopped: 128 + its number (130 when none was seen).
    pub fn exit_code(&self) -> u8 {
        match self.code.load(std::sync::atomic::Ordering::SeqCst) {
            0 => 130,
            code => code as u8,
        }
    }
}
