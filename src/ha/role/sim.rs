//! A seeded deterministic simulation of HA controllers (issue #26, item
//! 9): two or three controllers, each driven by its own [`Machine`], over
//! a simulated etcd (leases with a TTL, a leader key taken by
//! compare-and-set, the degraded set written only while the key is the
//! writer's) and two or three simulated ZEO backends (a commit lock per
//! backend, a fencing object whose serial every vote checks as
//! `checkCurrentSerialInTransaction` does, a transaction timeout that
//! frees a lock another transaction waits for).
//!
//! Each step advances the clock 100 ms and lets every live, unpaused
//! controller tick its machine (its etcd calls answered at once, or
//! `Unreachable` when it is cut off or etcd is down) and take one step of
//! its work: fencing one backend, reconciling, or one vote or finish of
//! a client's commit. Faults strike between steps: a controller paused
//! (SIGSTOP) for up to 8 s, cut off from etcd, killed and restarted,
//! etcd's majority down, a switchover. A quiet tail with no faults
//! follows.
//!
//! Invariants, checked as they could break:
//! - never two controllers commit: a transaction is finished on a backend
//!   only by the controller whose fence the backend carries, and along
//!   each backend's history every transaction belongs to the latest fence
//!   before it;
//! - no acknowledged commit lost: every acknowledged transaction is on
//!   every optimal backend;
//! - mirrors never silently diverge: when a leader starts serving, and at
//!   the end, the optimal backends' histories are identical;
//! - failover happens: after the quiet tail one controller leads and
//!   commits are acknowledged.
//!
//! A failing seed prints its trail; `ZEORAID_HA_SIM_SEED=N` replays it
//! alone, `ZEORAID_HA_SIM_SEEDS` sets how many seeds run (default 1000,
//! a few seconds).

use super::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeSet, HashMap};

const STEP_MS: u64 = 100;
const TTL_MS: u64 = 3000;
/// runzeo's `transaction-timeout`: a lock held longer is taken from its
/// holder when another transaction wants it.
const TX_TIMEOUT_MS: u64 = 2000;
const FAULT_STEPS: usize = 300;
const QUIET_STEPS: usize = 150;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Kind {
    Data { id: u64 },
    Fence { epoch: Epoch },
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Record {
    tid: u64,
    kind: Kind,
    /// The epoch of the controller that wrote it.
    epoch: Epoch,
}

#[derive(Clone, Debug)]
struct Lock {
    ctl: usize,
    since: u64,
}

#[derive(Clone, Debug, Default)]
struct Backend {
    history: Vec<Record>,
    lock: Option<Lock>,
}

impl Backend {
    /// The fence it carries: (epoch, serial = the fence record's tid).
    fn fence(&self) -> (Epoch, u64) {
        self.history
            .iter()
            .rev()
            .find_map(|r| match r.kind {
                Kind::Fence { epoch } => Some((epoch, r.tid)),
                Kind::Data { .. } => None,
            })
            .unwrap_or((0, 0))
    }

    fn last_tid(&self) -> u64 {
        self.history.last().map(|r| r.tid).unwrap_or(0)
    }

    fn data(&self) -> Vec<u64> {
        self.history
            .iter()
            .filter_map(|r| match r.kind {
                Kind::Data { id } => Some(id),
                Kind::Fence { .. } => None,
            })
            .collect()
    }

    /// Take the lock for `ctl` at `now`: free, already ours, or held past
    /// the transaction timeout (the holder's transaction is aborted).
    fn try_lock(&mut self, ctl: usize, now: u64) -> bool {
        match &self.lock {
            Some(l) if l.ctl != ctl && now.saturating_sub(l.since) < TX_TIMEOUT_MS => false,
            _ => {
                self.lock = Some(Lock { ctl, since: now });
                true
            }
        }
    }

    fn holds(&self, ctl: usize) -> bool {
        self.lock.as_ref().is_some_and(|l| l.ctl == ctl)
    }

    fn unlock(&mut self, ctl: usize) {
        if self.holds(ctl) {
            self.lock = None;
        }
    }
}

#[derive(Debug, Default)]
struct Etcd {
    up: bool,
    revision: u64,
    /// (holder, lease, create revision)
    key: Option<(usize, u64, u64)>,
    /// lease -> expiry
    leases: HashMap<u64, u64>,
    next_lease: u64,
    degraded: BTreeSet<usize>,
    backends: usize,
}

impl Etcd {
    fn expire(&mut self, now: u64) {
        self.leases.retain(|_, exp| *exp > now);
        if let Some((_, lease, _)) = self.key {
            if !self.leases.contains_key(&lease) {
                self.key = None;
                self.revision += 1;
            }
        }
    }

    /// The degraded set written only while `ctl` holds the key at `epoch`
    /// (a transaction comparing the key's create revision).
    fn degrade(&mut self, ctl: usize, epoch: Epoch, b: usize) -> bool {
        match self.key {
            // Never the last optimal backend (min-optimal is 1 here).
            Some((h, _, rev))
                if h == ctl && rev == epoch && self.degraded.len() + 1 < self.backends =>
            {
                self.degraded.insert(b);
                self.revision += 1;
                true
            }
            _ => false,
        }
    }
}

/// How a piece of a controller's work went this step.
enum Step {
    Done,
    /// Not yet (a lock held, etcd silent): again next step.
    Wait,
    /// A write failed at the fence.
    FencedOut,
}

#[derive(Clone, Debug)]
enum Work {
    Idle,
    Fencing { epoch: Epoch, next: usize },
    Reconciling { epoch: Epoch },
    Commit(Commit),
}

#[derive(Clone, Debug)]
struct Commit {
    id: u64,
    tid: u64,
    epoch: Epoch,
    /// Optimal backends at the start, in order.
    targets: Vec<usize>,
    next: usize,
    finishing: bool,
    finished: usize,
}

struct Ctl {
    name: String,
    machine: Machine,
    alive: bool,
    restart_at: u64,
    paused_until: u64,
    cut_until: u64,
    serving: Option<Epoch>,
    /// The fence serial this controller's votes check, per backend.
    known: Vec<u64>,
    work: Work,
}

struct Sim {
    seed: u64,
    rng: StdRng,
    now: u64,
    etcd: Etcd,
    backends: Vec<Backend>,
    ctls: Vec<Ctl>,
    next_tid: u64,
    next_id: u64,
    acked: Vec<u64>,
    trail: Vec<String>,
    etcd_back_at: u64,
    /// No new commits (the end's comparison waits for the last).
    draining: bool,
    /// Commits acknowledged while etcd's majority was down.
    acked_etcd_down: usize,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let nctl = rng.gen_range(2..=3);
        let nb = rng.gen_range(2..=3);
        let ctls = (0..nctl)
            .map(|i| Ctl {
                name: format!("c{i}"),
                machine: Machine::new(Timing::with_ttl(TTL_MS), 0),
                alive: true,
                restart_at: 0,
                paused_until: 0,
                cut_until: 0,
                serving: None,
                known: vec![0; nb],
                work: Work::Idle,
            })
            .collect();
        Sim {
            seed,
            rng,
            now: 0,
            etcd: Etcd {
                up: true,
                next_lease: 1,
                backends: nb,
                ..Etcd::default()
            },
            backends: vec![Backend::default(); nb],
            ctls,
            next_tid: 1,
            next_id: 1,
            acked: Vec::new(),
            trail: Vec::new(),
            etcd_back_at: 0,
            draining: false,
            acked_etcd_down: 0,
        }
    }

    fn fail(&self, what: &str) -> ! {
        let tail = &self.trail[self.trail.len().saturating_sub(60)..];
        panic!(
            "seed {} at {} ms: {what}\nreplay: ZEORAID_HA_SIM_SEED={} cargo test --lib ha::role\n\
             last steps:\n{}\nbackends: {:#?}",
            self.seed,
            self.now,
            self.seed,
            tail.join("\n"),
            self.backends.iter().map(|b| &b.history).collect::<Vec<_>>()
        )
    }

    fn log(&mut self, s: String) {
        self.trail.push(format!("{:>6} {s}", self.now));
    }

    fn reaches_etcd(&self, c: usize) -> bool {
        self.etcd.up && self.now >= self.ctls[c].cut_until
    }

    fn tid(&mut self) -> u64 {
        self.next_tid += 1;
        self.next_tid
    }

    fn run(&mut self) {
        for _ in 0..FAULT_STEPS {
            self.fault();
            self.step();
        }
        self.etcd.up = true;
        for c in &mut self.ctls {
            c.cut_until = 0;
            c.paused_until = 0;
        }
        let acked_before = self.acked.len();
        for _ in 0..QUIET_STEPS {
            self.step();
        }
        let leaders: Vec<&str> = self
            .ctls
            .iter()
            .filter(|c| c.alive && c.serving.is_some())
            .map(|c| c.name.as_str())
            .collect();
        if leaders.len() != 1 {
            self.fail(&format!(
                "after the quiet tail the serving controllers are {leaders:?}"
            ));
        }
        if self.acked.len() == acked_before {
            self.fail("no commit acknowledged during the quiet tail");
        }
        // Let the commit in flight end, start no other, then compare.
        self.draining = true;
        for _ in 0..QUIET_STEPS {
            if self.ctls.iter().all(|c| matches!(c.work, Work::Idle)) {
                break;
            }
            self.step();
        }
        self.check_identical("at the end");
    }

    fn fault(&mut self) {
        if !self.rng.gen_bool(0.04) {
            return;
        }
        let c = self.rng.gen_range(0..self.ctls.len());
        let steps = self.rng.gen_range(1..80u64);
        let until = self.now + steps * STEP_MS;
        let what = self.rng.gen_range(0..7);
        let name = self.ctls[c].name.clone();
        match what {
            0 => {
                self.ctls[c].paused_until = until;
                self.log(format!("{name} paused for {} ms", steps * STEP_MS));
            }
            1 => {
                self.ctls[c].cut_until = until;
                self.log(format!(
                    "{name} cut off from etcd for {} ms",
                    steps * STEP_MS
                ));
            }
            2 => {
                // kill -9: its connections drop, so the backends abort what
                // it held; it restarts as a fresh standby.
                for b in &mut self.backends {
                    b.unlock(c);
                }
                let nb = self.backends.len();
                let ctl = &mut self.ctls[c];
                ctl.alive = false;
                ctl.restart_at = until;
                ctl.serving = None;
                ctl.work = Work::Idle;
                ctl.known = vec![0; nb];
                ctl.machine = Machine::new(Timing::with_ttl(TTL_MS), until);
                self.log(format!("{name} killed, restarts in {} ms", steps * STEP_MS));
            }
            3 => {
                self.etcd.up = false;
                self.log("etcd majority down".into());
                self.etcd_back_at = until;
            }
            4 => {
                if matches!(self.ctls[c].machine.role(), Role::Leader { .. }) {
                    // Half the time with --to: the others see the handover.
                    let to = (c + 1) % self.ctls.len();
                    let named = self.rng.gen_bool(0.5);
                    self.log(format!(
                        "{name}: ctl switchover{}",
                        if named {
                            format!(" --to {}", self.ctls[to].name)
                        } else {
                            String::new()
                        }
                    ));
                    if named && self.etcd.up {
                        let to_name = self.ctls[to].name.clone();
                        for o in 0..self.ctls.len() {
                            if o != c && o != to && self.ctls[o].alive {
                                let ev = Event::HandedOver {
                                    to: to_name.clone(),
                                };
                                let actions = self.ctls[o].machine.step(self.now, ev);
                                self.perform(o, actions);
                            }
                        }
                    }
                    let actions = self.ctls[c].machine.step(self.now, Event::Switchover);
                    self.perform(c, actions);
                }
            }
            5 => {
                // ctl failover on a standby that reaches etcd: it drops the
                // key (the leader may well be alive) and campaigns now.
                let ctl = &self.ctls[c];
                let reaches = ctl.alive && self.now >= ctl.cut_until && self.etcd.up;
                if reaches && matches!(ctl.machine.role(), Role::Standby { .. }) {
                    self.log(format!("{name}: ctl failover"));
                    if self.etcd.key.take().is_some() {
                        self.etcd.revision += 1;
                    }
                    let actions = self.ctls[c].machine.step(self.now, Event::Failover);
                    self.perform(c, actions);
                }
            }
            _ => {}
        }
    }

    fn step(&mut self) {
        self.now += STEP_MS;
        if !self.etcd.up && self.now >= self.etcd_back_at {
            self.etcd.up = true;
            self.log("etcd back".into());
        }
        if self.etcd.up {
            self.etcd.expire(self.now);
        }
        let order: Vec<usize> = {
            let mut o: Vec<usize> = (0..self.ctls.len()).collect();
            let k = self.rng.gen_range(0..o.len());
            o.rotate_left(k);
            o
        };
        for c in order {
            let ctl = &mut self.ctls[c];
            if !ctl.alive {
                if self.now >= ctl.restart_at {
                    ctl.alive = true;
                    let name = ctl.name.clone();
                    self.log(format!("{name} restarted"));
                }
                continue;
            }
            if self.now < ctl.paused_until {
                continue;
            }
            let actions = ctl.machine.step(self.now, Event::Tick);
            self.perform(c, actions);
            self.work(c);
        }
    }

    /// Perform `actions` of controller `c`, feeding back the answers.
    fn perform(&mut self, c: usize, actions: Vec<Action>) {
        let mut queue = std::collections::VecDeque::from(actions);
        while let Some(a) = queue.pop_front() {
            let name = self.ctls[c].name.clone();
            let event = match a {
                Action::Campaign => Some(Event::Campaigned(self.campaign(c))),
                Action::Renew => Some(Event::Renewed(self.renew(c))),
                Action::LookAtKey => {
                    if self.reaches_etcd(c) {
                        let h = self.etcd.key.map(|(h, _, _)| self.ctls[h].name.clone());
                        Some(Event::Holder(h))
                    } else {
                        // The shell's call times out; the next tick asks again.
                        Some(Event::Renewed(Renewal::Unreachable))
                    }
                }
                Action::Fence { epoch } => {
                    self.ctls[c].work = Work::Fencing { epoch, next: 0 };
                    None
                }
                Action::Reconcile { epoch } => {
                    self.ctls[c].work = Work::Reconciling { epoch };
                    None
                }
                Action::Serve { epoch } => {
                    self.log(format!("{name} serves at epoch {epoch}"));
                    self.check_identical("when a leader starts serving");
                    self.ctls[c].serving = Some(epoch);
                    None
                }
                Action::StopServing { why } => {
                    self.log(format!("{name} stops: {why}"));
                    self.stop(c);
                    None
                }
                Action::Resign => {
                    if self.reaches_etcd(c) {
                        if let Some((h, lease, _)) = self.etcd.key {
                            if h == c {
                                self.etcd.leases.remove(&lease);
                                self.etcd.key = None;
                                self.etcd.revision += 1;
                            }
                        }
                    }
                    None
                }
            };
            if let Some(e) = event {
                // A standby that cannot reach etcd gets the timeout as an
                // unanswered campaign or look.
                let e = match (self.ctls[c].machine.role(), e) {
                    (Role::Standby { .. }, Event::Renewed(Renewal::Unreachable)) => {
                        Event::Campaigned(Campaign::Unreachable)
                    }
                    (_, e) => e,
                };
                let more = self.ctls[c].machine.step(self.now, e);
                queue.extend(more);
            }
        }
    }

    /// The key revision controller `c` believes it holds: its role's epoch,
    /// which moves on when a leader wins the key again under a new lease
    /// (its fence, and `serving`, stay).
    fn key_epoch(&self, c: usize) -> Epoch {
        self.ctls[c].machine.role().epoch().unwrap_or(0)
    }

    fn campaign(&mut self, c: usize) -> Campaign {
        if !self.reaches_etcd(c) {
            return Campaign::Unreachable;
        }
        match self.etcd.key {
            Some((h, _, _)) => Campaign::Lost {
                holder: Some(self.ctls[h].name.clone()),
            },
            None => {
                let lease = self.etcd.next_lease;
                self.etcd.next_lease += 1;
                self.etcd.leases.insert(lease, self.now + TTL_MS);
                self.etcd.revision += 1;
                let rev = self.etcd.revision;
                self.etcd.key = Some((c, lease, rev));
                let name = self.ctls[c].name.clone();
                self.log(format!("{name} won the key at epoch {rev}"));
                Campaign::Won { epoch: rev }
            }
        }
    }

    fn renew(&mut self, c: usize) -> Renewal {
        if !self.reaches_etcd(c) {
            return Renewal::Unreachable;
        }
        let epoch = self.ctls[c].machine.role().epoch();
        match self.etcd.key {
            Some((h, lease, rev)) if h == c && Some(rev) == epoch => {
                self.etcd.leases.insert(lease, self.now + TTL_MS);
                Renewal::Held
            }
            Some((h, _, _)) => Renewal::Lost {
                holder: Some(self.ctls[h].name.clone()),
            },
            None => Renewal::Lost { holder: None },
        }
    }

    /// Stop serving: abandon the work; locks of votes not finished are
    /// released by aborting (a transaction half finished stays in doubt).
    fn stop(&mut self, c: usize) {
        let work = std::mem::replace(&mut self.ctls[c].work, Work::Idle);
        self.ctls[c].serving = None;
        if let Work::Commit(_) | Work::Fencing { .. } = work {
            for b in &mut self.backends {
                b.unlock(c);
            }
        }
    }

    fn optimal(&self) -> Vec<usize> {
        (0..self.backends.len())
            .filter(|b| !self.etcd.degraded.contains(b))
            .collect()
    }

    fn work(&mut self, c: usize) {
        let work = self.ctls[c].work.clone();
        let name = self.ctls[c].name.clone();
        match work {
            Work::Idle => {
                if let Some(epoch) = self.ctls[c].serving {
                    match self.recover(c) {
                        Step::Done => {}
                        Step::Wait => return,
                        Step::FencedOut => {
                            let actions = self.ctls[c].machine.step(self.now, Event::FencedOut);
                            self.perform(c, actions);
                            return;
                        }
                    }
                    if !self.draining && self.rng.gen_bool(0.5) {
                        let tid = self.tid();
                        let id = self.next_id;
                        self.next_id += 1;
                        let targets = self.optimal();
                        self.ctls[c].work = Work::Commit(Commit {
                            id,
                            tid,
                            epoch,
                            targets,
                            next: 0,
                            finishing: false,
                            finished: 0,
                        });
                    }
                }
            }
            Work::Fencing { epoch, next } => {
                if next == self.backends.len() {
                    let actions = self.ctls[c].machine.step(
                        self.now,
                        Event::Fenced {
                            epoch,
                            outcome: Fence::Done,
                        },
                    );
                    self.perform(c, actions);
                    return;
                }
                let now = self.now;
                let b = &mut self.backends[next];
                if !b.try_lock(c, now) {
                    return; // wait for the holder (or its timeout)
                }
                let (have, _) = b.fence();
                if have > epoch {
                    b.unlock(c);
                    let actions = self.ctls[c].machine.step(
                        self.now,
                        Event::Fenced {
                            epoch,
                            outcome: Fence::Superseded { by: have },
                        },
                    );
                    self.perform(c, actions);
                    return;
                }
                let tid = self.tid();
                let b = &mut self.backends[next];
                b.history.push(Record {
                    tid,
                    kind: Kind::Fence { epoch },
                    epoch,
                });
                b.unlock(c);
                self.ctls[c].known[next] = tid;
                self.ctls[c].work = Work::Fencing {
                    epoch,
                    next: next + 1,
                };
                self.log(format!("{name} fenced backend {next} at epoch {epoch}"));
            }
            Work::Reconciling { epoch } => {
                let event = match self.reconcile(c) {
                    Step::Wait => return,
                    Step::Done => Event::Reconciled { epoch },
                    Step::FencedOut => Event::FencedOut,
                };
                self.ctls[c].work = Work::Idle;
                let actions = self.ctls[c].machine.step(self.now, event);
                self.perform(c, actions);
            }
            Work::Commit(mut t) => self.commit_step(c, &mut t),
        }
    }

    /// The new leader's reconcile: every optimal backend either has the
    /// longest optimal history's data or is completed to it (when the
    /// missing transactions can go after its last one) or is degraded.
    /// Its writes carry the fence check like every other.
    fn reconcile(&mut self, c: usize) -> Step {
        let optimal = self.optimal();
        let Some(&longest) = optimal
            .iter()
            .max_by_key(|&&b| self.backends[b].data().len())
        else {
            return Step::Done;
        };
        let want = self.backends[longest].data();
        let name = self.ctls[c].name.clone();
        for b in optimal {
            let have = self.backends[b].data();
            if have == want {
                continue;
            }
            if !want.starts_with(&have) {
                self.fail(&format!(
                    "backends {b} and {longest} diverged: {have:?} vs {want:?}"
                ));
            }
            let missing: Vec<Record> = self.backends[longest]
                .history
                .iter()
                .filter(|r| matches!(r.kind, Kind::Data { id } if !have.contains(&id)))
                .cloned()
                .collect();
            let last = self.backends[b].last_tid();
            if missing.iter().all(|r| r.tid > last) {
                let now = self.now;
                if !self.backends[b].try_lock(c, now) {
                    return Step::Wait;
                }
                self.backends[b].unlock(c);
                if self.backends[b].fence().1 != self.ctls[c].known[b] {
                    return Step::FencedOut;
                }
                self.log(format!(
                    "{name} completes {} in-doubt on {b}",
                    missing.len()
                ));
                self.backends[b].history.extend(missing);
            } else if self.reaches_etcd(c) && self.etcd.degrade(c, self.key_epoch(c), b) {
                self.log(format!(
                    "{name} degrades {b}: an in-doubt transaction is behind its fence"
                ));
            } else {
                return Step::Wait;
            }
        }
        Step::Done
    }

    /// A serving leader recovers one degraded backend (a full copy from an
    /// optimal one) when nothing is in flight: the copy's writes carry the
    /// fence check; the backend is optimal again only once etcd took that
    /// from the key's holder.
    fn recover(&mut self, c: usize) -> Step {
        let Some(&target) = self.etcd.degraded.iter().next() else {
            return Step::Done;
        };
        let Some(&source) = self.optimal().first() else {
            return Step::Done;
        };
        let now = self.now;
        if !self.backends[target].try_lock(c, now) {
            return Step::Wait;
        }
        self.backends[target].unlock(c);
        let known = &self.ctls[c].known;
        if self.backends[target].fence().1 != known[target]
            || self.backends[source].fence().1 != known[source]
        {
            return Step::FencedOut;
        }
        self.backends[target].history = self.backends[source].history.clone();
        self.ctls[c].known[target] = self.ctls[c].known[source];
        let name = self.ctls[c].name.clone();
        let held = matches!(self.etcd.key, Some((h, _, rev)) if h == c && rev == self.key_epoch(c));
        if self.reaches_etcd(c) && held {
            self.etcd.degraded.remove(&target);
            self.etcd.revision += 1;
            self.log(format!("{name} recovered backend {target} from {source}"));
        }
        Step::Wait
    }

    fn commit_step(&mut self, c: usize, t: &mut Commit) {
        let name = self.ctls[c].name.clone();
        if !t.finishing {
            if t.next == t.targets.len() {
                t.finishing = true;
                t.next = 0;
                self.ctls[c].work = Work::Commit(t.clone());
                return;
            }
            let b = t.targets[t.next];
            let now = self.now;
            if !self.backends[b].try_lock(c, now) {
                return;
            }
            let (_, serial) = self.backends[b].fence();
            if serial != self.ctls[c].known[b] {
                // checkCurrentSerialInTransaction fails: a ConflictError.
                self.log(format!(
                    "{name}: vote of {} fails at the fence of {b}",
                    t.id
                ));
                self.give_up(c, t);
                return;
            }
            t.next += 1;
            self.ctls[c].work = Work::Commit(t.clone());
            return;
        }
        if t.next == t.targets.len() {
            self.ctls[c].work = Work::Idle;
            if t.finished > 0 {
                self.acked.push(t.id);
                if !self.etcd.up {
                    self.acked_etcd_down += 1;
                }
                self.log(format!("{name} acknowledged {}", t.id));
                self.check_acked();
            }
            return;
        }
        let b = t.targets[t.next];
        t.next += 1;
        if self.backends[b].holds(c) {
            let (fence_epoch, _) = self.backends[b].fence();
            if fence_epoch != t.epoch {
                self.fail(&format!(
                    "{name} (epoch {}) finishes {} on backend {b} fenced at epoch {fence_epoch}",
                    t.epoch, t.id
                ));
            }
            if self.backends[b].last_tid() >= t.tid {
                self.fail(&format!("tid {} not after backend {b}'s last", t.tid));
            }
            self.backends[b].history.push(Record {
                tid: t.tid,
                kind: Kind::Data { id: t.id },
                epoch: t.epoch,
            });
            self.backends[b].unlock(c);
            t.finished += 1;
            self.ctls[c].work = Work::Commit(t.clone());
        } else if self.reaches_etcd(c) && self.etcd.degrade(c, self.key_epoch(c), b) {
            // The backend aborted it (transaction timeout): degrade it.
            self.log(format!(
                "{name}: finish of {} failed on {b}, degraded",
                t.id
            ));
            self.ctls[c].work = Work::Commit(t.clone());
        } else {
            // Cannot record the degradation: not ours to decide any more.
            self.log(format!(
                "{name}: finish of {} failed on {b}, cannot degrade",
                t.id
            ));
            self.give_up(c, t);
        }
    }

    /// Abort commit `t` of controller `c` (its locks go) and step its
    /// machine on being fenced out.
    fn give_up(&mut self, c: usize, t: &Commit) {
        for &v in &t.targets {
            self.backends[v].unlock(c);
        }
        self.ctls[c].work = Work::Idle;
        let actions = self.ctls[c].machine.step(self.now, Event::FencedOut);
        self.perform(c, actions);
    }

    fn check_acked(&self) {
        for b in self.optimal() {
            let data = self.backends[b].data();
            if let Some(lost) = self.acked.iter().find(|id| !data.contains(id)) {
                self.fail(&format!(
                    "acknowledged {lost} missing on optimal backend {b}"
                ));
            }
        }
    }

    fn check_history(&self) {
        for (i, b) in self.backends.iter().enumerate() {
            let mut fence = 0;
            let mut last = 0;
            for r in &b.history {
                if r.tid <= last {
                    self.fail(&format!("backend {i}: tids out of order at {}", r.tid));
                }
                last = r.tid;
                match r.kind {
                    Kind::Fence { epoch } => fence = epoch,
                    Kind::Data { id } if r.epoch != fence => self.fail(&format!(
                        "backend {i}: transaction {id} of epoch {} after the fence of {fence}",
                        r.epoch
                    )),
                    Kind::Data { .. } => {}
                }
            }
        }
    }

    fn check_identical(&self, when: &str) {
        self.check_history();
        self.check_acked();
        let optimal = self.optimal();
        let first = self.backends[optimal[0]].data();
        for &b in &optimal[1..] {
            if self.backends[b].data() != first {
                self.fail(&format!(
                    "{when}: optimal backends {} and {b} differ",
                    optimal[0]
                ));
            }
        }
    }
}

fn seeds() -> Vec<u64> {
    if let Some(s) = std::env::var("ZEORAID_HA_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![s];
    }
    let n = std::env::var("ZEORAID_HA_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    (0..n).collect()
}

#[test]
fn seeded_controllers_never_both_commit_and_lose_nothing() {
    let started = std::time::Instant::now();
    let (mut acked, mut changes, mut faults, mut etcd_down) = (0, 0, 0, 0);
    let seeds = seeds();
    for &seed in &seeds {
        let mut sim = Sim::new(seed);
        sim.run();
        sim.check_history();
        acked += sim.acked.len();
        etcd_down += sim.acked_etcd_down;
        changes += sim
            .ctls
            .iter()
            .map(|c| c.machine.leader_changes)
            .sum::<u64>();
        faults += sim
            .trail
            .iter()
            .filter(|s| {
                s.contains("paused")
                    || s.contains("cut off")
                    || s.contains("killed")
                    || s.contains("etcd majority")
            })
            .count();
    }
    println!(
        "{} seeds of {} steps: {acked} acknowledged commits, {changes} leader changes, \
         {faults} faults ({etcd_down} commits acknowledged while etcd was down), every \
         invariant held, in {:.1} s",
        seeds.len(),
        FAULT_STEPS + QUIET_STEPS,
        started.elapsed().as_secs_f64()
    );
    assert!(
        changes as usize > seeds.len(),
        "the faults caused failovers"
    );
}
