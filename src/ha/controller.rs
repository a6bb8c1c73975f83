//! The HA controller: the IO shell around the pure role machine
//! ([`super::role`]). One named thread (`zeoraid-ha`) owns the
//! [`Machine`], steps it with a clock tick and with what the
//! [`Election`] answered (campaign, renew, the key's holder), and carries
//! out what it asks for: fence every served array at the epoch
//! ([`RaidStorage::take_fence`]), reconcile, open the server's
//! [`ServeSwitch`] to serve, close it (refusing `register` and closing the
//! clients, so ZEO clients given every controller's address go to the
//! leader) to stand by, resign the key. A vote that failed at the fence
//! (an array's [`FenceState::Lost`]) demotes it. Operators' requests
//! (`ctl switchover`, `ctl failover`) come in over a channel ([`Handle`])
//! and are answered between ticks. What it decides (the
//! refusal's words, the status, whether a name is taken) are pure
//! functions below.
//!
//! Every etcd call has the client's deadlines (connect and request
//! timeouts per endpoint), so a silent etcd delays a step by a bounded
//! time; a leader that cannot reach etcd keeps serving (the machine's
//! rule). [`preflight`] runs before the server listens: an unreachable
//! etcd, or a live controller of the same name holding the leader key,
//! refuses the start. On shutdown the thread is joined; a leader closes
//! its clients and resigns, so a standby takes over at once.

use super::etcd::{Cas, Client, Compare, Error, KeyValue, Options};
use super::lease::{Election, Leadership, Outcome};
use super::members::Membership;
use super::prime;
use super::role::{Action, Campaign, Demotion, Event, Fence, Machine, Renewal, Role, Timing};
use crate::raid::fence::FenceState;
use crate::raid::RaidStorage;
use crate::server::ServeSwitch;
use crate::status::HaStatus;
use crate::storage::Storage;
use crossbeam_channel::{Receiver, Sender};
use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the controller needs of `[ha]` (the config layer builds it).
#[derive(Clone, Debug)]
pub struct Settings {
    pub endpoints: Vec<String>,
    pub cluster: String,
    pub name: String,
    pub lease_ttl: Duration,
    pub renew_interval: Duration,
}

impl Settings {
    /// The cluster's leader key.
    pub fn leader_key(&self) -> Vec<u8> {
        format!("{}/leader", self.cluster).into_bytes()
    }

    /// The key a leader handing over with `ctl switchover --to` names its
    /// successor in (bound to a lease of its own, so it goes by itself).
    pub fn handover_key(&self) -> Vec<u8> {
        format!("{}/handover", self.cluster).into_bytes()
    }

    fn timing(&self) -> Timing {
        Timing {
            ttl_ms: self.lease_ttl.as_millis() as u64,
            renew_ms: (self.renew_interval.as_millis() as u64).max(1),
        }
    }

    fn endpoints_text(&self) -> String {
        self.endpoints.join(", ")
    }
}

/// How often the thread steps the machine with a tick (it decides what
/// is due): often enough that a due renewal is at most this late.
fn tick_every(renew: Duration) -> Duration {
    (renew / 4).clamp(Duration::from_millis(20), Duration::from_millis(250))
}

/// Why `register` is refused in `role` (pure).
pub fn refusal(name: &str, cluster: &str, role: &Role) -> String {
    match role {
        Role::Standby {
            leader: Some(leader),
        } => format!(
            "zeoraid controller {name} is a standby; the leader is {leader}. Connect to the \
             leader (ZEO clients given every controller's address do so by themselves)"
        ),
        Role::Standby { leader: None } => format!(
            "zeoraid controller {name} is a standby; no leader of cluster {cluster} is known \
             yet (a takeover is under way, or etcd is unreachable). Retry, or connect to \
             another controller"
        ),
        Role::Fencing { .. } | Role::Reconciling { .. } => format!(
            "zeoraid controller {name} is taking over cluster {cluster} ({}); retry in a moment",
            role.name()
        ),
        Role::Leader { .. } => format!("zeoraid controller {name} stopped leading"),
    }
}

/// What the status document shows of the machine (pure).
pub fn status_of(name: &str, cluster: &str, m: &Machine, now: u64) -> HaStatus {
    let role = m.role();
    let leader = match role {
        Role::Standby { leader } => leader.clone(),
        _ => Some(name.to_string()),
    };
    HaStatus {
        controller: name.into(),
        cluster: cluster.into(),
        role: role.name().into(),
        leader,
        epoch: role.epoch(),
        leader_changes: m.leader_changes,
        lease_age_ms: m.lease_age(now),
        key_seen_age_ms: m.key_seen_age(now),
    }
}

/// Whether the leader key, seen holding `name` at first and again after
/// more than a lease's TTL, shows another live controller of that name:
/// the same key (creation) under the same lease, so it was renewed (pure).
pub fn name_taken(name: &[u8], first: &KeyValue, later: Option<&KeyValue>) -> bool {
    first.value == name
        && later.is_some_and(|k| {
            k.value == name && k.lease == first.lease && k.create_revision == first.create_revision
        })
}

/// A role in words, for operators' answers (pure).
fn describe(role: &Role) -> String {
    match role {
        Role::Standby { leader: Some(l) } => format!("standby; the leader is {l}"),
        Role::Standby { leader: None } => "standby; no leader known".into(),
        Role::Fencing { epoch } => format!("fencing the backends at epoch {epoch}"),
        Role::Reconciling { epoch } => format!("reconciling at epoch {epoch}"),
        Role::Leader { epoch } => format!("leader at epoch {epoch}"),
    }
}

/// The holder's name as etcd has it.
fn holder_name(kv: &KeyValue) -> String {
    String::from_utf8_lossy(&kv.value).into_owned()
}

/// The fencing epoch of a leader key created at etcd revision `rev`.
fn epoch_of(rev: i64) -> u64 {
    u64::try_from(rev).unwrap_or(0)
}

/// Before the server listens: reach etcd, and make sure no live controller
/// of this name holds the leader key. A key left by a crashed controller
/// of this name expires within a lease's TTL, which this waits out.
pub fn preflight(s: &Settings) -> Result<Joined, String> {
    let client = Client::new(Options::new(s.endpoints.clone()))
        .map_err(|e| format!("[ha]: {e} (set ha.endpoints)"))?;
    let election = Election::new(client, &s.leader_key(), s.lease_ttl);
    let unreachable = |e: Error| {
        format!(
            "[ha]: cannot reach etcd at {} ({e}); a controller does not start without etcd, \
             since it could not tell whether another controller leads. Start etcd, or fix \
             ha.endpoints",
            s.endpoints_text()
        )
    };
    let joined = |election: Election| -> Result<Joined, String> {
        let membership = Membership::join(
            election.client(),
            &s.cluster,
            &s.name,
            s.lease_ttl,
            s.renew_interval,
        )?;
        Ok(Joined {
            election,
            membership,
        })
    };
    let key = s.leader_key();
    let Some(first) = election.client().get(&key).map_err(unreachable)? else {
        return joined(election);
    };
    if first.value != s.name.as_bytes() {
        return joined(election);
    }
    log::warn!(
        "[ha]: the leader key of cluster {} names this controller ({}) under etcd lease {}: \
         a previous run that did not resign, or another controller with the same name. \
         Waiting up to one lease TTL ({:?}) for it to expire",
        s.cluster,
        s.name,
        first.lease,
        s.lease_ttl
    );
    let deadline = Instant::now() + s.lease_ttl + s.renew_interval;
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let later = election.client().get(&key).map_err(unreachable)?;
        if !name_taken(s.name.as_bytes(), &first, later.as_ref()) {
            return joined(election);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "[ha]: another live controller named {:?} leads cluster {:?} (its etcd lease \
                 {} is being renewed): every controller needs a name of its own. Set a \
                 different ha.name, or stop the other controller",
                s.name, s.cluster, first.lease
            ));
        }
    }
}

/// What [`preflight`] hands the controller: the election, and this
/// controller's registration under its name ([`Membership`]).
pub struct Joined {
    pub election: Election,
    pub membership: Membership,
}

/// An operator's request to the controller thread (`ctl switchover`,
/// `ctl failover`), answered on `reply` with what happened or why not.
#[derive(Debug)]
pub enum Request {
    /// The leader hands leadership over (to `to`, or to whichever standby
    /// takes the key first), after the commit in flight.
    Switchover {
        to: Option<String>,
        reply: Sender<Result<String, String>>,
    },
    /// A standby takes the key from a leader that is gone, now rather
    /// than when its lease runs out.
    Failover {
        reply: Sender<Result<String, String>>,
    },
}

/// What the admin listener holds to ask the controller thread things.
#[derive(Clone, Debug)]
pub struct Handle {
    requests: Sender<Request>,
}

impl Handle {
    /// Ask for a switchover (see [`Request::Switchover`]).
    pub fn switchover(&self, to: Option<String>) -> Result<String, String> {
        self.ask(|reply| Request::Switchover { to, reply })
    }

    /// Ask for a failover (see [`Request::Failover`]).
    pub fn failover(&self) -> Result<String, String> {
        self.ask(|reply| Request::Failover { reply })
    }

    fn ask(
        &self,
        request: impl FnOnce(Sender<Result<String, String>>) -> Request,
    ) -> Result<String, String> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.requests
            .send(request(tx))
            .map_err(|_| "the HA controller has stopped".to_string())?;
        rx.recv_timeout(REQUEST_WAIT).map_err(|_| {
            format!(
                "the HA controller did not answer within {} s; see the log",
                REQUEST_WAIT.as_secs()
            )
        })?
    }
}

/// How long an operator's request waits for the controller's answer.
const REQUEST_WAIT: Duration = Duration::from_secs(60);

/// How long a switchover waits for the commit in flight before it cuts
/// it off (its client retries on the new leader).
const DRAIN_WAIT: Duration = Duration::from_secs(10);

/// The running controller thread.
pub struct Controller {
    stop: Option<Sender<()>>,
    requests: Sender<Request>,
    thread: Option<JoinHandle<()>>,
}

/// What the thread owns.
struct Driver {
    settings: Settings,
    election: Election,
    membership: Membership,
    /// When the member lease was last renewed (every renew interval).
    membership_kept: Instant,
    key: Vec<u8>,
    machine: Machine,
    leadership: Option<Leadership>,
    arrays: Vec<(String, Arc<RaidStorage>)>,
    switch: ServeSwitch,
    started: Instant,
    stop: Receiver<()>,
    requests: Receiver<Request>,
    stopping: bool,
    /// The refusal last given to the gate.
    refusing: String,
    /// A failed fence's answer, held for the next round so that the lease
    /// is renewed between attempts (a fence retried in a tight loop would
    /// let it expire unnoticed).
    deferred: Option<Event>,
    /// Fence attempts failed in a row (logged at 1, 2, 4, 8, ...).
    fence_failures: u32,
    /// The fence being written, on its own thread: a backend whose commit
    /// lock a paused controller holds keeps the fence's vote waiting (up
    /// to the backends' `transaction-timeout`), and the lease must be
    /// renewed meanwhile.
    fencing: Option<(u64, JoinHandle<Result<(), String>>)>,
    /// A fence asked for while another was being written.
    fence_next: Option<u64>,
}

impl Controller {
    /// Start the thread. The arrays must already stand by and the server's
    /// gate be closed ([`crate::server::Server::start_standby`]).
    pub fn start(
        settings: Settings,
        joined: Joined,
        arrays: Vec<(String, Arc<RaidStorage>)>,
        switch: ServeSwitch,
    ) -> std::io::Result<Controller> {
        let Joined {
            election,
            membership,
        } = joined;
        let (stop_tx, stop_rx) = crossbeam_channel::bounded(1);
        let (req_tx, req_rx) = crossbeam_channel::unbounded();
        let machine = Machine::new(settings.timing(), 0);
        let key = settings.leader_key();
        let mut d = Driver {
            election,
            membership,
            membership_kept: Instant::now(),
            key,
            machine,
            leadership: None,
            arrays,
            switch,
            started: Instant::now(),
            stop: stop_rx,
            requests: req_rx,
            stopping: false,
            refusing: String::new(),
            deferred: None,
            fence_failures: 0,
            fencing: None,
            fence_next: None,
            settings,
        };
        d.publish();
        let thread = std::thread::Builder::new()
            .name("zeoraid-ha".into())
            .spawn(move || d.run())?;
        Ok(Controller {
            stop: Some(stop_tx),
            requests: req_tx,
            thread: Some(thread),
        })
    }

    /// A handle for operators' requests.
    pub fn handle(&self) -> Handle {
        Handle {
            requests: self.requests.clone(),
        }
    }

    /// Stop the thread (a leader closes its clients and resigns) and join it.
    pub fn shutdown(mut self) {
        self.stop_and_join();
    }

    fn stop_and_join(&mut self) {
        // Dropping the sender wakes the thread.
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("the HA controller thread panicked (a zeoraid bug)");
            }
        }
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.stop_and_join();
    }
}

impl Driver {
    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn name(&self) -> &str {
        &self.settings.name
    }

    fn run(mut self) {
        log::info!(
            "[ha]: controller {} of cluster {} stands by; etcd at {}",
            self.name(),
            self.settings.cluster,
            self.settings.endpoints_text()
        );
        let every = tick_every(self.settings.renew_interval);
        while !self.stopping {
            self.step(Event::Tick);
            if let Some(e) = self.deferred.take() {
                self.step(e);
            }
            self.poll_fence();
            if matches!(self.machine.role(), Role::Leader { .. }) && self.fenced_out() {
                self.step(Event::FencedOut);
            }
            self.keep_membership();
            self.publish();
            self.pause(every);
        }
        self.leave();
    }

    /// Renew the member lease, once per renew interval.
    fn keep_membership(&mut self) {
        if self.membership_kept.elapsed() >= self.settings.renew_interval {
            self.membership.keep(self.election.client());
            self.membership_kept = Instant::now();
        }
    }

    /// Wait `d` unless asked to stop; an operator's request is answered
    /// at once.
    fn pause(&mut self, d: Duration) {
        crossbeam_channel::select! {
            recv(self.stop) -> _ => self.stopping = true,
            recv(self.requests) -> r => {
                if let Ok(r) = r {
                    self.answer(r);
                }
            }
            default(d) => {}
        }
    }

    fn answer(&mut self, r: Request) {
        match r {
            Request::Switchover { to, reply } => {
                let _ = reply.send(self.switchover(to));
            }
            Request::Failover { reply } => {
                let _ = reply.send(self.failover());
            }
        }
        self.publish();
    }

    /// `ctl switchover [--to NAME]` on the leader: name the successor in
    /// etcd (with `to`), let the commit in flight finish and refuse the
    /// next votes (their clients are sent away and retry on the new
    /// leader), then stand by and resign; this controller does not
    /// campaign for a lease.
    fn switchover(&mut self, to: Option<String>) -> Result<String, String> {
        let me = self.settings.name.clone();
        if !matches!(self.machine.role(), Role::Leader { .. }) {
            return Err(format!(
                "controller {me} does not lead ({}); ask the leader's admin listener, or run \
                 `zeoraid ctl failover` on a standby if the leader is gone",
                describe(self.machine.role())
            ));
        }
        if let Some(to) = &to {
            let members = self
                .membership
                .members(self.election.client())
                .map_err(|e| {
                    format!(
                        "cannot read the cluster's controllers from etcd: {e}; nothing was changed"
                    )
                })?;
            super::members::successor_check(to, &me, &self.settings.cluster, &members)?;
            self.name_successor(to)?;
        }
        for (name, a) in &self.arrays {
            if !a.stand_by_after_commit(DRAIN_WAIT) {
                log::warn!(
                    "[ha]: array {name:?}: the commit in flight did not end within {} s of \
                     the switchover; cut off (its client retries on the new leader)",
                    DRAIN_WAIT.as_secs()
                );
            }
        }
        self.step(Event::Switchover);
        let whom = to.map_or("the first standby to take the key".into(), |t| {
            format!("{t:?}")
        });
        log::warn!("[ha]: controller {me} hands leadership over to {whom} (ctl switchover)");
        Ok(format!(
            "controller {me} stopped leading and resigned the leader key; {whom} takes over"
        ))
    }

    /// Put the handover key naming `to`, on a lease of its own (one TTL:
    /// the other standbys wait that long for `to`).
    fn name_successor(&self, to: &str) -> Result<(), String> {
        let client = self.election.client();
        let unreachable =
            |e: Error| format!("cannot name the successor in etcd: {e}; nothing was changed");
        let (lease, _) = client.grant(self.settings.lease_ttl).map_err(unreachable)?;
        client
            .put(&self.settings.handover_key(), to.as_bytes(), Some(lease))
            .map_err(unreachable)?;
        Ok(())
    }

    /// `ctl failover` on a standby: drop the leader key of a leader that
    /// is gone (only the holder seen now: compared by its creation) and
    /// campaign at once; the takeover fences the old leader out, alive or
    /// not.
    fn failover(&mut self) -> Result<String, String> {
        let me = self.settings.name.clone();
        if !matches!(self.machine.role(), Role::Standby { .. }) {
            return Err(format!(
                "controller {me} is not a standby ({})",
                describe(self.machine.role())
            ));
        }
        let client = self.election.client();
        let held = client
            .get(&self.key)
            .map_err(|e| format!("cannot read the leader key: {e}; check etcd"))?;
        let from = match &held {
            Some(kv) => {
                let cas = client
                    .compare_and_delete(&self.key, &[Compare::CreateRevision(kv.create_revision)])
                    .map_err(|e| format!("cannot drop the leader key: {e}; check etcd"))?;
                if !matches!(cas, Cas::Applied { .. }) {
                    return Err(
                        "the leader key changed meanwhile; look at `ctl status` and \
                                retry"
                            .into(),
                    );
                }
                Some(holder_name(kv))
            }
            None => None,
        };
        self.step(Event::Failover);
        self.step(Event::Tick);
        let role = self.machine.role().clone();
        log::warn!(
            "[ha]: controller {me} takes over from {} (ctl failover): {}",
            from.as_deref().unwrap_or("nobody"),
            describe(&role)
        );
        match role {
            Role::Standby { leader: Some(l) } => Err(format!(
                "dropped the leader key of {}, but {l} took it first: it is alive; ask it for a \
                 switchover instead",
                from.as_deref().unwrap_or("nobody")
            )),
            Role::Standby { leader: None } => Err(
                "dropped the leader key, but etcd did not answer the campaign; this controller \
                 campaigns again by itself"
                    .into(),
            ),
            _ => Ok(format!(
                "controller {me} took the leader key from {} and is {}",
                from.as_deref().unwrap_or("nobody"),
                describe(&role)
            )),
        }
    }

    fn fenced_out(&self) -> bool {
        self.arrays
            .iter()
            .any(|(_, a)| matches!(a.fence_state(), FenceState::Lost { .. }))
    }

    /// Step the machine on `event` and carry out what follows, answering
    /// each action's outcome back to it.
    fn step(&mut self, event: Event) {
        let now = self.now();
        let mut todo: VecDeque<Action> = self.machine.step(now, event).into();
        while let Some(action) = todo.pop_front() {
            if let Some(answer) = self.carry_out(action) {
                let now = self.now();
                todo.extend(self.machine.step(now, answer));
            }
        }
    }

    fn carry_out(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::Campaign => Some(Event::Campaigned(self.campaign())),
            Action::Renew => Some(Event::Renewed(self.renew())),
            Action::LookAtKey => Some(match self.election.client().get(&self.key) {
                Ok(None) => {
                    self.look_at_handover();
                    Event::Holder(None)
                }
                Ok(kv) => Event::Holder(kv.as_ref().map(holder_name)),
                Err(e) => {
                    log::warn!(
                        "[ha]: controller {} cannot look at the leader key: {e}",
                        self.name()
                    );
                    // A standby's "etcd did not answer": look again later.
                    Event::Campaigned(Campaign::Unreachable)
                }
            }),
            Action::Fence { epoch } => {
                if self.fencing.is_some() {
                    self.fence_next = Some(epoch);
                } else {
                    self.start_fence(epoch);
                }
                None
            }
            Action::Reconcile { epoch } => {
                // Each array reconciled while it fenced: under the fence's
                // commit locks ([`RaidStorage::take_fence`]).
                log::info!(
                    "[ha]: controller {} fenced and reconciled every array at epoch {epoch}",
                    self.name()
                );
                Some(Event::Reconciled { epoch })
            }
            Action::Serve { epoch } => {
                self.prime_invalidations();
                self.switch.serve();
                log::warn!(
                    "[ha]: controller {} leads cluster {} at epoch {epoch}: serving clients",
                    self.name(),
                    self.settings.cluster
                );
                None
            }
            Action::StopServing { why } => {
                self.stop_serving(&why);
                None
            }
            Action::Resign => {
                self.resign();
                None
            }
        }
    }

    /// The key is vacant: if a leader handed it to another controller
    /// (`ctl switchover --to`), leave it to that one for a lease.
    fn look_at_handover(&mut self) {
        let Ok(Some(kv)) = self.election.client().get(&self.settings.handover_key()) else {
            return;
        };
        let to = holder_name(&kv);
        if to != self.settings.name {
            let now = self.now();
            let actions = self.machine.step(now, Event::HandedOver { to });
            debug_assert!(actions.is_empty(), "{actions:?}");
        }
    }

    fn campaign(&mut self) -> Campaign {
        match self.election.campaign(self.settings.name.as_bytes()) {
            Ok(Outcome::Won(l)) => {
                let epoch = epoch_of(l.create_revision);
                if matches!(self.machine.role(), Role::Leader { .. }) {
                    log::warn!(
                        "[ha]: leader {} found its etcd lease dropped with nobody holding the \
                         key (etcd lost its quorum, or was restarted) and won the key again \
                         (epoch {epoch}); still serving, its fence unchanged",
                        self.name()
                    );
                } else {
                    log::info!(
                        "[ha]: controller {} won the leader key of cluster {} (epoch {epoch}); \
                         fencing the backends",
                        self.name(),
                        self.settings.cluster
                    );
                }
                self.leadership = Some(l);
                // A handover that named this controller is done.
                let handover = self.settings.handover_key();
                if let Ok(Some(kv)) = self.election.client().get(&handover) {
                    if kv.value == self.settings.name.as_bytes() {
                        let _ = self.election.client().delete(&handover);
                    }
                }
                Campaign::Won { epoch }
            }
            Ok(Outcome::Lost(kv)) => Campaign::Lost {
                holder: kv.as_ref().map(holder_name),
            },
            Err(e) => {
                log::warn!(
                    "[ha]: controller {} cannot campaign for leadership: {e}",
                    self.name()
                );
                Campaign::Unreachable
            }
        }
    }

    fn renew(&mut self) -> Renewal {
        let Some(l) = &self.leadership else {
            return Renewal::Lost { holder: None };
        };
        match self.election.renew(l) {
            Ok(_) => match self.election.client().get(&self.key) {
                Ok(Some(kv)) if kv.lease == l.lease && kv.create_revision == l.create_revision => {
                    Renewal::Held
                }
                Ok(kv) => Renewal::Lost {
                    holder: kv.as_ref().map(holder_name),
                },
                Err(e) => {
                    log::warn!(
                        "[ha]: leader {} cannot read the leader key back: {e}; still \
                         serving (a controller taking over fences this one first)",
                        self.name()
                    );
                    Renewal::Unreachable
                }
            },
            Err(Error::LeaseNotFound(_)) => Renewal::Lost {
                holder: self
                    .election
                    .client()
                    .get(&self.key)
                    .ok()
                    .flatten()
                    .as_ref()
                    .map(holder_name),
            },
            Err(e) => {
                log::warn!(
                    "[ha]: leader {} cannot renew its lease: {e}; still serving (a \
                     controller taking over fences this one first). Check etcd",
                    self.name()
                );
                Renewal::Unreachable
            }
        }
    }

    /// Start fencing every array at `epoch` on the fence thread; its
    /// outcome is stepped by [`Driver::poll_fence`].
    fn start_fence(&mut self, epoch: u64) {
        let arrays = self.arrays.clone();
        let name = self.settings.name.clone();
        let spawned = std::thread::Builder::new()
            .name("zeoraid-ha-fence".into())
            .spawn(move || {
                for (array, a) in &arrays {
                    a.take_fence(epoch, &name)
                        .map_err(|e| format!("array {array:?}: {e}"))?;
                }
                Ok(())
            });
        match spawned {
            Ok(h) => self.fencing = Some((epoch, h)),
            Err(e) => {
                log::error!("[ha]: cannot start the fence thread: {e}; retrying");
                self.deferred = Some(Event::Fenced {
                    epoch,
                    outcome: Fence::Failed,
                });
            }
        }
    }

    /// Step the fence's outcome once its thread ended (`wait`: wait for
    /// it). A fence that ended after this controller stopped fencing at
    /// its epoch (the lease went meanwhile) is undone: the arrays stand by.
    fn poll_fence(&mut self) {
        self.end_fence(false);
        if self.fencing.is_none() {
            if let Some(epoch) = self.fence_next.take() {
                self.start_fence(epoch);
            }
        }
    }

    fn end_fence(&mut self, wait: bool) {
        match &self.fencing {
            Some((_, h)) if wait || h.is_finished() => {}
            _ => return,
        }
        let Some((epoch, h)) = self.fencing.take() else {
            return;
        };
        let result = h
            .join()
            .unwrap_or_else(|_| Err("the fence thread panicked (a zeoraid bug)".into()));
        let outcome = match result {
            Ok(()) => {
                self.fence_failures = 0;
                Fence::Done
            }
            Err(e) => {
                self.fence_failures = self.fence_failures.saturating_add(1);
                if self.fence_failures.is_power_of_two() {
                    log::error!(
                        "[ha]: controller {} cannot fence {e} at epoch {epoch} ({} attempts); \
                         retrying, not serving meanwhile. Check that the array's backends run \
                         and answer, and that they set a transaction-timeout (a paused \
                         controller holding their commit lock keeps every fence waiting \
                         without one)",
                        self.settings.name,
                        self.fence_failures
                    );
                }
                Fence::Failed
            }
        };
        let current = matches!(self.machine.role(), Role::Fencing { epoch: e } if *e == epoch);
        if !current || wait {
            for (_, a) in &self.arrays {
                a.stand_by();
            }
            return;
        }
        let failed = outcome == Fence::Failed;
        let event = Event::Fenced { epoch, outcome };
        if failed {
            // Retried on the next round, after the lease is renewed.
            self.deferred = Some(event);
        } else {
            self.step(event);
        }
    }

    /// Before serving: load each array's newest transactions into its
    /// invalidation queue, so that clients the old leader served keep
    /// their caches ([`super::prime`]); bounded by [`prime::budget`].
    fn prime_invalidations(&mut self) {
        let deadline = Instant::now() + prime::budget(self.settings.renew_interval);
        for (name, array) in &self.arrays {
            let Some(bound) = self.switch.invalidation_queue_size(name) else {
                continue;
            };
            let started = Instant::now();
            let loaded = match array.last_transaction() {
                Ok(last) => {
                    let read = prime::read_recent(array.as_ref(), last, bound, deadline);
                    prime::primed(&read, last, bound).map(|q| (q, last))
                }
                Err(e) => {
                    log::warn!(
                        "[ha]: controller {} cannot read the last transaction of {name:?}: {e}",
                        self.settings.name
                    );
                    None
                }
            };
            match loaded {
                Some((q, last)) => {
                    let (n, oldest) = (q.len(), q.first().map(|t| t.0));
                    self.switch.prime_invalidations(name, q);
                    log::info!(
                        "[ha]: controller {} primed the invalidation queue of {name:?} with {n} \
                         transactions ({} to {last}) in {:?}",
                        self.settings.name,
                        oldest.map(|t| t.to_string()).unwrap_or_default(),
                        started.elapsed()
                    );
                }
                None => {
                    self.switch.prime_invalidations(name, Vec::new());
                    log::warn!(
                        "[ha]: controller {} could not read the recent history of {name:?} \
                         within {:?}: its invalidation queue starts empty, so reconnecting \
                         clients drop their caches (more load at first, nothing stale)",
                        self.settings.name,
                        prime::budget(self.settings.renew_interval)
                    );
                }
            }
        }
    }

    fn stop_serving(&mut self, why: &Demotion) {
        for (_, a) in &self.arrays {
            a.stand_by();
        }
        // A demoted controller gives the key up if it still has it.
        self.resign();
        let reason = refusal(
            &self.settings.name,
            &self.settings.cluster,
            self.machine.role(),
        );
        self.switch.stop_serving(reason.clone());
        self.refusing = reason;
        log::warn!(
            "[ha]: controller {} stopped leading: {why}; clients closed, standing by",
            self.name()
        );
    }

    fn resign(&mut self) {
        let Some(l) = self.leadership.take() else {
            return;
        };
        match self.election.resign(&l) {
            Ok(true) => log::info!("[ha]: controller {} resigned the leader key", self.name()),
            Ok(false) => {}
            Err(e) => log::warn!(
                "[ha]: controller {} cannot resign the leader key: {e}; it expires with the \
                 lease ({:?})",
                self.name(),
                l.ttl
            ),
        }
    }

    /// Show the role in the status, and keep the gate's refusal current.
    fn publish(&mut self) {
        let now = self.now();
        let (name, cluster) = (&self.settings.name, &self.settings.cluster);
        self.switch
            .set_status(status_of(name, cluster, &self.machine, now));
        let role = self.machine.role();
        if !matches!(role, Role::Leader { .. }) {
            let reason = refusal(name, cluster, role);
            if reason != self.refusing {
                self.switch.refuse(reason.clone());
                self.refusing = reason;
            }
        }
    }

    /// On shutdown: a controller holding the key closes its clients and
    /// resigns, so a standby takes over without waiting for the lease.
    fn leave(&mut self) {
        // A fence being written ends (bounded by the backends' deadline)
        // and is undone.
        self.end_fence(true);
        if self.machine.role().epoch().is_some() {
            // The commit in flight ends first: its client is answered.
            for (_, a) in &self.arrays {
                a.stand_by_after_commit(DRAIN_WAIT);
            }
            let name = self.settings.name.clone();
            self.switch.stop_serving(format!(
                "zeoraid controller {name} is shutting down; connect to another controller"
            ));
        }
        self.resign();
        self.membership.leave(self.election.client());
        log::info!("[ha]: controller {} stopped", self.name());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(value: &str, lease: i64, create: i64) -> KeyValue {
        KeyValue {
            key: b"c/leader".to_vec(),
            value: value.as_bytes().to_vec(),
            create_revision: create,
            mod_revision: create,
            version: 1,
            lease,
        }
    }

    #[test]
    fn a_name_is_taken_only_by_a_renewed_key_of_that_name() {
        let first = kv("a", 7, 10);
        assert!(name_taken(b"a", &first, Some(&kv("a", 7, 10))));
        // Expired, or taken anew by a restarted controller, or by another.
        assert!(!name_taken(b"a", &first, None));
        assert!(!name_taken(b"a", &first, Some(&kv("a", 8, 12))));
        assert!(!name_taken(b"a", &first, Some(&kv("b", 9, 13))));
        assert!(!name_taken(b"a", &kv("b", 7, 10), Some(&kv("b", 7, 10))));
    }

    #[test]
    fn refusals_name_the_leader() {
        let r = refusal(
            "ctl-b",
            "c",
            &Role::Standby {
                leader: Some("ctl-a".into()),
            },
        );
        assert!(
            r.starts_with("zeoraid controller ctl-b is a standby; the leader is ctl-a"),
            "{r}"
        );
        let r = refusal("ctl-b", "c", &Role::Standby { leader: None });
        assert!(r.contains("no leader of cluster c is known"), "{r}");
        let r = refusal("ctl-b", "c", &Role::Fencing { epoch: 3 });
        assert!(r.contains("taking over cluster c (fencing)"), "{r}");
    }

    #[test]
    fn the_status_follows_the_machine() {
        let t = Timing::with_ttl(3000);
        let mut m = Machine::new(t, 0);
        let s = status_of("a", "c", &m, 0);
        assert_eq!(
            (s.role.as_str(), s.leader, s.epoch, s.lease_age_ms),
            ("standby", None, None, None)
        );
        assert_eq!(s.key_seen_age_ms, None, "etcd has not answered yet");
        m.step(0, Event::Tick);
        m.step(0, Event::Campaigned(Campaign::Won { epoch: 5 }));
        let s = status_of("a", "c", &m, 400);
        assert_eq!(
            (
                s.role.as_str(),
                s.leader.as_deref(),
                s.epoch,
                s.leader_changes,
                s.lease_age_ms
            ),
            ("fencing", Some("a"), Some(5), 1, Some(400))
        );
        assert_eq!(s.key_seen_age_ms, None, "it holds the key");
        let mut m = Machine::new(t, 0);
        m.step(0, Event::Tick);
        m.step(
            100,
            Event::Campaigned(Campaign::Lost {
                holder: Some("b".into()),
            }),
        );
        let s = status_of("a", "c", &m, 700);
        assert_eq!((s.lease_age_ms, s.key_seen_age_ms), (None, Some(600)));
    }

    #[test]
    fn ticks_are_frequent_but_bounded() {
        assert_eq!(
            tick_every(Duration::from_secs(1)),
            Duration::from_millis(250)
        );
        assert_eq!(
            tick_every(Duration::from_millis(40)),
            Duration::from_millis(20)
        );
    }
}
