//! A seeded fault campaign over the array: a first step toward the
//! simulation of issue #22, seeded with the commit phases of issue #21.
//!
//! Each seed drives one array of three in-process file mirrors from one
//! thread, with sequential fan-out, through a random run of steps: commits
//! by three writers, some of which take a backend out at a random phase of
//! the commit (disabled, removed, its vote disagreeing after it prepared,
//! its finish reported failed after it was done); operator actions between
//! commits (disable, remove, add back, recover, verify). After every step
//! the invariants are checked:
//!
//! - every acknowledged commit is on every optimal backend;
//! - the optimal backends agree on the last transaction;
//! - a commit with at least two optimal backends before it is acknowledged
//!   (one backend taken out never costs the client);
//! - a degraded backend is always recoverable, and verify then finds it
//!   identical;
//! - the array is never left without an optimal backend, nothing is left
//!   recovering, and the commit path holds nothing when a step ends.
//!
//! A failing seed names itself; `ZEORAID_SIM_SEED=N cargo test --lib sim`
//! replays that seed alone: the same steps and faults (one driving thread,
//! sequential fan-out, no timers; only the tids, taken from the clock,
//! differ). `ZEORAID_SIM_SEEDS` sets how many seeds a run takes (default
//! 1000, about 20 s in a debug build).
//!
//! What it is not yet: the simulation #22 asks for drives the array's
//! state machine and commit path from a scheduler of its own, with
//! simulated ZEO backends that hang or drop connections and concurrent
//! clients; that needs the state machine of #22 first. This campaign runs
//! the real array over real file storages, one commit at a time. Made to
//! skip resolving an unknown outcome before a recovery (the bug of #21),
//! it fails at seed 0 with that error.

use super::phases::{
    file_spec, states_by_name, Action, Counter, HookCell, Phase, Removal, Twist, PHASES,
};
use super::*;
use crate::raid::state::inflight::Readiness;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;

const NAMES: [&str; 3] = ["a", "b", "c"];
const STEPS: usize = 40;

struct Sim {
    seed: u64,
    dir: tempfile::TempDir,
    array: Arc<RaidStorage>,
    hooks: HashMap<&'static str, Arc<HookCell>>,
    removed: Vec<&'static str>,
    writers: Vec<Counter>,
    rng: StdRng,
    /// What happened, step by step: printed with a failure.
    trail: Vec<String>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut hooks = HashMap::new();
        let specs = NAMES
            .iter()
            .map(|&n| {
                let h = Arc::new(HookCell::default());
                hooks.insert(n, h.clone());
                file_spec(n, dir.path().join(format!("{n}.fs")), &h, false)
            })
            .collect();
        let opts = RaidOptions {
            fanout: fanout::Mode::Sequential,
            ..opts()
        };
        let array = Arc::new(RaidStorage::open(opts, specs).expect("array opens"));
        let writers = (0..3).map(|_| Counter::new(&array)).collect();
        Sim {
            seed,
            dir,
            array,
            hooks,
            removed: Vec::new(),
            writers,
            rng: StdRng::seed_from_u64(seed),
            trail: Vec::new(),
        }
    }

    fn states(&self) -> HashMap<String, String> {
        states_by_name(&self.array)
    }

    /// The backends in `state`, in the array's order (added ones last).
    fn with_state(&self, state: &str) -> Vec<&'static str> {
        self.array
            .core
            .backends
            .iter()
            .filter(|b| !b.is_removed() && b.role().label() == state)
            .filter_map(|b| NAMES.iter().copied().find(|n| *n == b.name))
            .collect()
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> Option<T> {
        if from.is_empty() {
            None
        } else {
            Some(from[self.rng.gen_range(0..from.len())])
        }
    }

    fn fail(&self, what: &str) -> ! {
        panic!(
            "seed {} failed: {what}\nsteps:\n  {}\nreplay: ZEORAID_SIM_SEED={} cargo test --lib sim",
            self.seed,
            self.trail.join("\n  "),
            self.seed
        )
    }

    fn step(&mut self) {
        let r = self.rng.gen_range(0..100);
        match r {
            0..=54 => self.commit(),
            55..=69 => {
                if let Some(n) = self.pick(&self.with_state("degraded")) {
                    self.trail.push(format!("recover {n}"));
                    self.recover(n);
                }
            }
            70..=77 => {
                if let Some(n) = self.pick(&self.removed.clone()) {
                    self.trail.push(format!("add {n} back"));
                    self.add_back(n);
                }
            }
            78..=85 => {
                let optimal = self.with_state("optimal");
                if optimal.len() >= 2 {
                    let n = self.pick(&optimal).expect("one");
                    self.trail.push(format!("disable {n}"));
                    if let Err(e) = self.array.disable(n) {
                        self.fail(&format!("disable {n}: {e}"));
                    }
                }
            }
            86..=93 => {
                let optimal = self.with_state("optimal");
                if optimal.len() >= 2 {
                    let n = self.pick(&optimal[1..]).expect("one");
                    self.trail.push(format!("verify {n}"));
                    self.verify(n, "");
                }
            }
            _ => {
                let optimal = self.with_state("optimal");
                let present: Vec<&'static str> = NAMES
                    .iter()
                    .copied()
                    .filter(|n| !self.removed.contains(n))
                    .filter(|n| optimal.len() >= 2 || !optimal.contains(n))
                    .collect();
                if let Some(n) = self.pick(&present) {
                    self.trail.push(format!("remove {n}"));
                    if let Err(e) = self.array.remove_backend(n) {
                        self.fail(&format!("remove {n}: {e}"));
                    }
                    self.removed.push(n);
                }
            }
        }
    }

    fn commit(&mut self) {
        let w = self.rng.gen_range(0..self.writers.len());
        let optimal = self.with_state("optimal");
        let removal: Arc<Mutex<Option<Removal>>> = Arc::default();
        let mut armed = None;
        if optimal.len() >= 2 && self.rng.gen_bool(0.5) {
            let n = self.pick(&optimal).expect("one");
            let phase = PHASES[self.rng.gen_range(0..PHASES.len())];
            let kind = self.rng.gen_range(0..3);
            let (label, twist, action): (&str, Twist, Action) = match (kind, phase) {
                (0, _) => {
                    let a = self.array.clone();
                    (
                        "disable",
                        Twist::None,
                        Box::new(move || {
                            let _ = a.disable(n);
                        }),
                    )
                }
                (1, _) => {
                    let (a, slot) = (self.array.clone(), removal.clone());
                    (
                        "remove",
                        Twist::None,
                        Box::new(move || {
                            *lock(&slot) = Some(std::thread::spawn(move || a.remove_backend(n)));
                        }),
                    )
                }
                (_, Phase::BeforeVote | Phase::AfterVote) => {
                    ("disagree", Twist::VoteDisagrees, Box::new(|| {}))
                }
                _ => (
                    "finish fails after doing it",
                    Twist::FinishFailsAfterDoing,
                    Box::new(|| {}),
                ),
            };
            self.trail
                .push(format!("commit by {w}, {label} {n} at {phase:?}"));
            self.hooks[n].arm(phase, twist, action);
            armed = Some((n, label));
        } else {
            self.trail.push(format!("commit by {w}"));
        }
        let result = self.writers[w].bump(&self.array);
        // A phase the commit did not reach (no group commit step) leaves
        // the hook armed: disarm it.
        if let Some((n, _)) = armed {
            self.hooks[n].disarm();
        }
        if let Some(h) = lock(&removal).take() {
            let n = armed.map(|a| a.0).expect("a removal was armed");
            match h.join() {
                Ok(Ok(())) => self.removed.push(n),
                Ok(Err(e)) => self.fail(&format!("removing {n} mid-commit: {e}")),
                Err(_) => self.fail(&format!("removing {n} mid-commit panicked")),
            }
        }
        // A vote that disagrees is an answer like any other: with two
        // optimal backends it ties, and the tie goes to the one listed
        // first, so the client gets its error (the documented rule).
        let tie_lost =
            matches!(armed, Some((n, "disagree")) if optimal.len() == 2 && optimal[0] == n);
        if let Err(e) = result {
            if optimal.len() >= 2 && !tie_lost {
                self.fail(&format!(
                    "a commit with {} optimal backends failed: {e}",
                    optimal.len()
                ));
            }
            self.trail.push(format!("  (failed, as it may: {e})"));
        }
    }

    fn recover(&mut self, n: &str) {
        match self.array.recover(n, false) {
            Ok(_) => {}
            Err(e) => self.fail(&format!("recovery of {n}: {e}")),
        }
        if self.states().get(n).map(String::as_str) != Some("optimal") {
            self.fail(&format!("{n} not optimal after its recovery"));
        }
        self.verify(n, " after recovery");
    }

    /// Verify finds `n` identical to an optimal backend.
    fn verify(&self, n: &str, when: &str) {
        match self.array.verify(n) {
            Ok(v) if v.difference.is_none() => {}
            Ok(v) => self.fail(&format!("verify {n}{when}: {:?}", v.difference)),
            Err(e) => self.fail(&format!("verify {n}{when}: {e}")),
        }
    }

    fn add_back(&mut self, n: &'static str) {
        let h = Arc::new(HookCell::default());
        self.hooks.insert(n, h.clone());
        let path = self.dir.path().join(format!("{n}.fs"));
        let spec = file_spec(n, path.clone(), &h, false);
        if let Err(e) = self
            .array
            .add_backend(spec, crate::config::BackendConfig::file(n, path))
        {
            self.fail(&format!("adding {n} back: {e}"));
        }
        self.removed.retain(|r| *r != n);
        if self.states().get(n).map(String::as_str) != Some("optimal") {
            self.recover(n);
        }
    }

    /// The invariants after a step.
    fn check(&self) {
        let states = self.states();
        if states.values().any(|s| s == "recovering") {
            self.fail(&format!("a backend left recovering: {states:?}"));
        }
        let optimal: Vec<&Backend> = self
            .array
            .core
            .backends
            .iter()
            .filter(|b| !b.is_removed() && b.role().label() == "optimal")
            .collect();
        if optimal.is_empty() {
            self.fail(&format!("no optimal backend: {states:?}"));
        }
        let mut last = None;
        for b in &optimal {
            let Ok(s) = b.storage() else {
                self.fail(&format!("optimal {} has no storage", b.name));
            };
            let t = s.last_transaction().unwrap_or(Tid::ZERO);
            if *last.get_or_insert(t) != t {
                self.fail(&format!(
                    "optimal backends disagree on the last tid: {t} on {}",
                    b.name
                ));
            }
            for (i, w) in self.writers.iter().enumerate() {
                for (tid, data) in &w.acked {
                    match s.load_serial(w.oid, *tid) {
                        Ok(got) if got[..] == data[..] => {}
                        other => self.fail(&format!(
                            "writer {i}'s acknowledged {tid} on optimal {}: {other:?}",
                            b.name
                        )),
                    }
                }
            }
        }
        let inflight = lock(&self.array.core.commit.inflight).clone();
        for (i, b) in self.array.core.backends.iter().enumerate() {
            let optimal = !b.is_removed() && b.role().label() == "optimal";
            match inflight.readiness(i) {
                Readiness::Idle => {}
                // Left to its recovery, which resolves it first.
                Readiness::Unknown(_) if !optimal => {}
                other => self.fail(&format!(
                    "between steps, {} (optimal: {optimal}) is {other:?}",
                    b.name
                )),
            }
        }
    }

    /// The end: every backend back, recovered, verified.
    fn finish(&mut self) {
        for n in self.removed.clone() {
            self.trail.push(format!("end: add {n} back"));
            self.add_back(n);
        }
        for n in self.with_state("degraded") {
            self.trail.push(format!("end: recover {n}"));
            self.recover(n);
        }
        self.check();
        let commit = self.writers[0].bump(&self.array);
        if let Err(e) = commit {
            self.fail(&format!("a commit at the end: {e}"));
        }
        self.check();
        self.array.close();
    }
}

fn run_seed(seed: u64) {
    let mut sim = Sim::new(seed);
    for _ in 0..STEPS {
        sim.step();
        sim.check();
    }
    sim.finish();
}

#[test]
fn seeded_fault_campaign_keeps_every_invariant() {
    if let Some(seed) = std::env::var("ZEORAID_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        run_seed(seed);
        return;
    }
    let seeds: u64 = std::env::var("ZEORAID_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let started = std::time::Instant::now();
    for seed in 0..seeds {
        run_seed(seed);
    }
    println!(
        "{seeds} seeds of {STEPS} steps over three file mirrors, every invariant held, in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
