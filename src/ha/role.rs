//! The controller's HA role as a pure state machine (issue #26): standby,
//! fencing, reconciling, leader. It is advanced by events (a clock tick,
//! what a campaign or a renewal got from etcd, the holder seen by the
//! watch, a fence or a reconcile finished, a vote that failed at the
//! fence, an operator's switchover) and answers with the actions the IO
//! shell performs (campaign, renew, fence, reconcile, serve, stop
//! serving, resign), the way raft-rs's `RawNode` hands out `Ready`. No IO
//! and no clock of its own: time comes in with every event, in
//! milliseconds from any fixed origin.
//!
//! The rules, and why:
//! - A standby campaigns when it sees no holder, never while one holds the
//!   key, and not for one lease after it resigned (so a switchover goes to
//!   another controller). Nor for two leases after etcd comes back from
//!   not answering it: the leader served all along (below), and etcd may have
//!   dropped its lease as it came back; it asks for the key again at once,
//!   and the standby leaves it that time, so an etcd outage ends with no
//!   failover.
//! - Winning the key is not leading yet: the winner first fences every
//!   backend at its epoch (the key's etcd create revision, which only
//!   grows), then reconciles them (an in-doubt transaction of the old
//!   leader is completed or its backends degraded), and only then serves.
//! - A leader demotes itself on evidence that someone else leads: etcd
//!   says its lease is gone or names another holder (layer a: quick when
//!   etcd answers), or a vote failed at the fence (layer b: needs no etcd).
//! - A leader that cannot reach etcd at all keeps serving: nobody can take
//!   over without etcd, and one that does fences it first (Patroni's
//!   `failsafe_mode`). Failover is what waits while etcd is down.

use std::fmt;

/// A leader's fencing epoch: the etcd create revision of its leader key.
pub type Epoch = u64;

/// How often things happen, in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// The lease's time to live.
    pub ttl_ms: u64,
    /// How often the leader renews its lease and a standby looks at the
    /// key (and retries what etcd did not answer).
    pub renew_ms: u64,
}

impl Timing {
    /// `ttl_ms` with renewals three times per lease.
    pub fn with_ttl(ttl_ms: u64) -> Timing {
        Timing {
            ttl_ms,
            renew_ms: (ttl_ms / 3).max(1),
        }
    }
}

/// Where a controller stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not leading: watching the key, not serving clients. `leader` is the
    /// holder last seen (`None`: nobody, or not known).
    Standby { leader: Option<String> },
    /// Holds the key at `epoch` and is fencing the backends.
    Fencing { epoch: Epoch },
    /// Fenced; completing or degrading the old leader's in-doubt
    /// transaction.
    Reconciling { epoch: Epoch },
    /// Serving clients; every vote carries the fence of `epoch`.
    Leader { epoch: Epoch },
}

impl Role {
    /// The epoch this controller holds the key at, if it does.
    pub fn epoch(&self) -> Option<Epoch> {
        match self {
            Role::Standby { .. } => None,
            Role::Fencing { epoch } | Role::Reconciling { epoch } | Role::Leader { epoch } => {
                Some(*epoch)
            }
        }
    }

    /// The word `ctl status` shows.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Standby { .. } => "standby",
            Role::Fencing { .. } => "fencing",
            Role::Reconciling { .. } => "reconciling",
            Role::Leader { .. } => "leader",
        }
    }
}

/// What a campaign got from etcd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Campaign {
    /// The key is ours, created at revision `epoch`.
    Won { epoch: Epoch },
    /// Someone holds it (`None`: it vanished meanwhile).
    Lost { holder: Option<String> },
    /// etcd did not answer in time.
    Unreachable,
}

/// What a renewal (a lease keepalive and a look at the key) got.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Renewal {
    /// The lease lives and the key is still ours.
    Held,
    /// etcd answered: the lease is gone, or the key names `holder`.
    Lost { holder: Option<String> },
    /// etcd did not answer in time.
    Unreachable,
}

/// How fencing the backends went.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fence {
    /// Every backend carries our epoch's fence.
    Done,
    /// A backend carries a newer epoch's fence: someone else leads.
    Superseded { by: Epoch },
    /// A backend did not answer; try again.
    Failed,
}

/// Why a controller stopped leading (or gave up taking over).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Demotion {
    /// etcd says our lease is gone or another controller holds the key.
    LostKey { holder: Option<String> },
    /// A vote failed at the fence: a newer leader fenced the backends.
    FencedOut,
    /// A backend carries a newer epoch's fence than ours.
    Superseded { by: Epoch },
    /// The operator asked for a switchover.
    Resigned,
}

impl fmt::Display for Demotion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Demotion::LostKey { holder: Some(h) } => {
                write!(f, "etcd says {h:?} holds the leader key now")
            }
            Demotion::LostKey { holder: None } => {
                write!(f, "etcd says our lease is gone (not renewed in time)")
            }
            Demotion::FencedOut => write!(
                f,
                "a vote failed at the fence: a newer leader fenced the backends"
            ),
            Demotion::Superseded { by } => {
                write!(f, "a backend is fenced at a newer epoch ({by})")
            }
            Demotion::Resigned => write!(f, "the operator asked for a switchover"),
        }
    }
}

/// What happened, for the machine to step on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Time passed.
    Tick,
    Campaigned(Campaign),
    Renewed(Renewal),
    /// The watch (or a poll) saw the key's holder.
    Holder(Option<String>),
    /// Fencing at `epoch` ended.
    Fenced {
        epoch: Epoch,
        outcome: Fence,
    },
    /// Reconciling at `epoch` is done.
    Reconciled {
        epoch: Epoch,
    },
    /// A vote of ours failed at the fence.
    FencedOut,
    /// `ctl switchover`: hand leadership to another controller.
    Switchover,
    /// `ctl switchover --to`: the leader handed the key to `to`; a standby
    /// that is not `to` leaves the vacant key to it for one lease.
    HandedOver {
        to: String,
    },
    /// `ctl failover` on a standby, once it dropped the gone leader's key:
    /// campaign now, whatever held it off.
    Failover,
}

/// What the IO shell is to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Grant a lease and create the key if absent; answer with
    /// [`Event::Campaigned`].
    Campaign,
    /// Keep the lease alive and check the key; answer with
    /// [`Event::Renewed`].
    Renew,
    /// Look at the key's holder; answer with [`Event::Holder`].
    LookAtKey,
    /// Fence every backend at `epoch`; answer with [`Event::Fenced`].
    Fence { epoch: Epoch },
    /// Complete or degrade in-doubt transactions; answer with
    /// [`Event::Reconciled`].
    Reconcile { epoch: Epoch },
    /// Start serving clients, every vote carrying the fence of `epoch`.
    Serve { epoch: Epoch },
    /// Refuse votes from now on and close the clients (they reconnect to
    /// the new leader).
    StopServing { why: Demotion },
    /// Delete the key while it is still ours and revoke the lease.
    Resign,
}

/// One controller's HA state.
#[derive(Clone, Debug)]
pub struct Machine {
    timing: Timing,
    role: Role,
    /// When the next renewal, look at the key or retry is due.
    due: u64,
    /// A campaign or renewal asked for and not yet answered.
    asking: bool,
    /// No campaign before this (after a resignation).
    holdoff_until: u64,
    /// A standby whose last look at the key or campaign etcd did not
    /// answer: the first vacant key it sees after that starts a holdoff.
    cut_off: bool,
    /// When the lease was last renewed (`None`: not leading).
    renewed_at: Option<u64>,
    /// When etcd last answered a standby's look at the key or campaign.
    seen_at: Option<u64>,
    /// Times this controller took the key.
    pub leader_changes: u64,
}

impl Machine {
    /// A controller starting as a standby at time `now`.
    pub fn new(timing: Timing, now: u64) -> Machine {
        Machine {
            timing,
            role: Role::Standby { leader: None },
            due: now,
            asking: false,
            holdoff_until: now,
            cut_off: false,
            renewed_at: None,
            seen_at: None,
            leader_changes: 0,
        }
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    /// Milliseconds since etcd last told this standby who holds the key
    /// (`None` while it holds the key, or before etcd answered).
    pub fn key_seen_age(&self, now: u64) -> Option<u64> {
        match self.role {
            Role::Standby { .. } => self.seen_at.map(|t| now.saturating_sub(t)),
            _ => None,
        }
    }

    /// Milliseconds since the lease was last renewed, while holding it.
    pub fn lease_age(&self, now: u64) -> Option<u64> {
        self.renewed_at.map(|t| now.saturating_sub(t))
    }

    /// Step on `event` at time `now`; the actions to perform, in order.
    pub fn step(&mut self, now: u64, event: Event) -> Vec<Action> {
        let mut out = Vec::new();
        match (&self.role, event) {
            (_, Event::Tick) => self.tick(now, &mut out),

            (Role::Standby { .. }, Event::Campaigned(c)) => {
                self.asking = false;
                if c != Campaign::Unreachable {
                    self.seen_at = Some(now);
                }
                match c {
                    Campaign::Won { epoch } => {
                        self.role = Role::Fencing { epoch };
                        self.renewed_at = Some(now);
                        self.due = now + self.timing.renew_ms;
                        self.leader_changes += 1;
                        out.push(Action::Fence { epoch });
                    }
                    Campaign::Lost { holder } => {
                        self.cut_off = false;
                        self.role = Role::Standby { leader: holder };
                        self.due = now + self.timing.renew_ms;
                    }
                    Campaign::Unreachable => {
                        self.cut_off = true;
                        self.due = now + self.timing.renew_ms;
                    }
                }
            }
            (Role::Standby { .. }, Event::HandedOver { to }) => {
                self.holdoff_until = self.holdoff_until.max(now + self.timing.ttl_ms);
                self.role = Role::Standby { leader: Some(to) };
            }
            (Role::Standby { .. }, Event::Failover) => {
                self.holdoff_until = now;
                self.cut_off = false;
                self.asking = false;
                self.due = now;
                self.role = Role::Standby { leader: None };
            }
            (Role::Standby { .. }, Event::Holder(holder)) => {
                self.asking = false;
                self.seen_at = Some(now);
                if holder.is_none() {
                    if std::mem::take(&mut self.cut_off) {
                        // Back from an etcd outage the leader served
                        // through: its turn to take the key again. Two
                        // leases: the leader may still be in a renewal
                        // etcd's silence stretched (a connect and a
                        // request timeout per endpoint), then renews.
                        self.holdoff_until = self.holdoff_until.max(now + 2 * self.timing.ttl_ms);
                    }
                    // Nobody holds it: campaign at once (the next tick),
                    // or when the holdoff ends.
                    self.due = if now < self.holdoff_until {
                        (now + self.timing.renew_ms).min(self.holdoff_until)
                    } else {
                        now
                    };
                } else {
                    self.cut_off = false;
                }
                self.role = Role::Standby { leader: holder };
            }
            // Late answers for a role already left change nothing.
            (Role::Standby { .. }, _) => {}

            (Role::Leader { .. }, Event::Campaigned(c)) => {
                self.asking = false;
                match c {
                    Campaign::Won { epoch } => {
                        self.role = Role::Leader { epoch };
                        self.renewed_at = Some(now);
                        self.due = now + self.timing.renew_ms;
                    }
                    Campaign::Lost { holder } => {
                        self.demote(now, Demotion::LostKey { holder }, &mut out)
                    }
                    Campaign::Unreachable => {
                        self.demote(now, Demotion::LostKey { holder: None }, &mut out)
                    }
                }
            }

            (_, Event::Renewed(r)) => {
                self.asking = false;
                match r {
                    Renewal::Held => self.renewed_at = Some(now),
                    // A serving leader whose lease etcd dropped while nobody
                    // took the key (say etcd lost its quorum and revoked
                    // expired leases as it came back) asks for the key
                    // again before anything else: won, it keeps serving
                    // (its fence still guards every vote: a controller that
                    // took over meanwhile made that fence fail).
                    Renewal::Lost { holder: None } if matches!(self.role, Role::Leader { .. }) => {
                        self.asking = true;
                        out.push(Action::Campaign);
                    }
                    Renewal::Lost { holder } => {
                        self.demote(now, Demotion::LostKey { holder }, &mut out)
                    }
                    // Keep leading: only a controller that fenced us can
                    // take over, and then our next vote fails.
                    Renewal::Unreachable => {}
                }
            }
            (_, Event::Holder(Some(h))) => {
                self.demote(now, Demotion::LostKey { holder: Some(h) }, &mut out)
            }
            // Our own key vanishing is seen by the next renewal.
            (_, Event::Holder(None)) => {}
            (_, Event::FencedOut) => self.demote(now, Demotion::FencedOut, &mut out),
            (&Role::Fencing { epoch }, Event::Fenced { epoch: e, outcome }) if e == epoch => {
                match outcome {
                    Fence::Done => {
                        self.role = Role::Reconciling { epoch };
                        out.push(Action::Reconcile { epoch });
                    }
                    Fence::Superseded { by } => {
                        self.demote(now, Demotion::Superseded { by }, &mut out)
                    }
                    Fence::Failed => out.push(Action::Fence { epoch }),
                }
            }
            (&Role::Reconciling { epoch }, Event::Reconciled { epoch: e }) if e == epoch => {
                self.role = Role::Leader { epoch };
                out.push(Action::Serve { epoch });
            }
            (Role::Leader { .. }, Event::Switchover) => {
                self.demote(now, Demotion::Resigned, &mut out);
                out.push(Action::Resign);
                self.holdoff_until = now + self.timing.ttl_ms;
            }
            // A fence or reconcile answer for an epoch left, a switchover
            // before serving, a repeated campaign answer: nothing to do.
            _ => {}
        }
        out
    }

    fn tick(&mut self, now: u64, out: &mut Vec<Action>) {
        if self.asking || now < self.due {
            return;
        }
        self.due = now + self.timing.renew_ms;
        match &self.role {
            Role::Standby { leader } => {
                self.asking = true;
                if leader.is_none() && now >= self.holdoff_until {
                    out.push(Action::Campaign);
                } else {
                    out.push(Action::LookAtKey);
                }
            }
            _ => {
                self.asking = true;
                out.push(Action::Renew);
            }
        }
    }

    fn demote(&mut self, now: u64, why: Demotion, out: &mut Vec<Action>) {
        let holder = match &why {
            Demotion::LostKey { holder } => holder.clone(),
            _ => None,
        };
        if self.role.epoch().is_some() {
            out.push(Action::StopServing { why });
        }
        self.role = Role::Standby { leader: holder };
        self.renewed_at = None;
        self.asking = false;
        self.due = now + self.timing.renew_ms;
    }
}

#[cfg(test)]
mod sim;

#[cfg(test)]
mod tests {
    use super::*;

    const T: Timing = Timing {
        ttl_ms: 3000,
        renew_ms: 1000,
    };

    fn leader(m: &mut Machine, now: u64, epoch: Epoch) {
        assert_eq!(m.step(now, Event::Tick), vec![Action::Campaign]);
        m.step(now, Event::Campaigned(Campaign::Won { epoch }));
        m.step(
            now,
            Event::Fenced {
                epoch,
                outcome: Fence::Done,
            },
        );
        assert_eq!(
            m.step(now, Event::Reconciled { epoch }),
            vec![Action::Serve { epoch }]
        );
    }

    #[test]
    fn a_standby_campaigns_only_when_nobody_holds_the_key() {
        let mut m = Machine::new(T, 0);
        assert_eq!(m.step(0, Event::Tick), vec![Action::Campaign]);
        // Asked and not answered: no second campaign.
        assert_eq!(m.step(10, Event::Tick), vec![]);
        m.step(
            20,
            Event::Campaigned(Campaign::Lost {
                holder: Some("b".into()),
            }),
        );
        assert_eq!(
            m.role(),
            &Role::Standby {
                leader: Some("b".into())
            }
        );
        assert_eq!(m.step(500, Event::Tick), vec![], "not due yet");
        assert_eq!(m.step(1020, Event::Tick), vec![Action::LookAtKey]);
        m.step(1030, Event::Holder(None));
        assert_eq!(m.step(1030, Event::Tick), vec![Action::Campaign]);
    }

    #[test]
    fn a_standby_back_from_an_etcd_outage_leaves_the_key_to_the_leader_for_two_leases() {
        let mut m = Machine::new(T, 0);
        m.step(0, Event::Tick);
        m.step(
            1,
            Event::Campaigned(Campaign::Lost {
                holder: Some("a".into()),
            }),
        );
        assert_eq!(m.step(1001, Event::Tick), vec![Action::LookAtKey]);
        m.step(1002, Event::Campaigned(Campaign::Unreachable));
        assert_eq!(m.step(2002, Event::Tick), vec![Action::LookAtKey]);
        // etcd is back and dropped a's lease: the key is vacant.
        m.step(2010, Event::Holder(None));
        assert_eq!(m.step(2010, Event::Tick), vec![], "no campaign yet");
        assert_eq!(m.step(3010, Event::Tick), vec![Action::LookAtKey]);
        m.step(3011, Event::Holder(None));
        assert_eq!(m.step(4011, Event::Tick), vec![Action::LookAtKey]);
        m.step(4012, Event::Holder(None));
        let mut t = 5012;
        for _ in 0..3 {
            assert_eq!(m.step(t, Event::Tick), vec![Action::LookAtKey], "at {t}");
            m.step(t + 1, Event::Holder(None));
            t += 1001;
        }
        assert_eq!(m.step(7900, Event::Tick), vec![]);
        assert_eq!(
            m.step(8010, Event::Tick),
            vec![Action::Campaign],
            "the leader did not come back: take over"
        );
        // Without an outage first, a vacant key is campaigned for at once.
        let mut m = Machine::new(T, 0);
        m.step(0, Event::Tick);
        m.step(1, Event::Campaigned(Campaign::Lost { holder: None }));
        m.step(1001, Event::Tick);
        m.step(1002, Event::Holder(None));
        assert_eq!(m.step(1002, Event::Tick), vec![Action::Campaign]);
    }

    #[test]
    fn a_handover_holds_the_others_off_and_a_failover_campaigns_at_once() {
        let mut m = Machine::new(T, 0);
        m.step(0, Event::Tick);
        m.step(
            1,
            Event::Campaigned(Campaign::Lost {
                holder: Some("a".into()),
            }),
        );
        // a handed the key to c: this one (b) waits a lease.
        m.step(500, Event::HandedOver { to: "c".into() });
        m.step(1001, Event::Tick);
        m.step(1002, Event::Holder(None));
        assert_eq!(m.step(2002, Event::Tick), vec![Action::LookAtKey]);
        m.step(2003, Event::Holder(None));
        assert_eq!(m.step(3500, Event::Tick), vec![Action::Campaign]);

        // Held off after an outage, a failover campaigns now.
        let mut m = Machine::new(T, 0);
        m.step(0, Event::Tick);
        m.step(1, Event::Campaigned(Campaign::Unreachable));
        m.step(1001, Event::Tick);
        m.step(1002, Event::Holder(None));
        assert_eq!(m.step(1500, Event::Tick), vec![]);
        m.step(1600, Event::Failover);
        assert_eq!(m.step(1600, Event::Tick), vec![Action::Campaign]);
        // A leader ignores both.
        let mut m = Machine::new(T, 0);
        leader(&mut m, 0, 3);
        assert_eq!(m.step(10, Event::Failover), vec![]);
        assert_eq!(m.step(10, Event::HandedOver { to: "c".into() }), vec![]);
        assert_eq!(m.role(), &Role::Leader { epoch: 3 });
    }

    #[test]
    fn winning_fences_then_reconciles_then_serves() {
        let mut m = Machine::new(T, 0);
        m.step(0, Event::Tick);
        assert_eq!(
            m.step(1, Event::Campaigned(Campaign::Won { epoch: 7 })),
            vec![Action::Fence { epoch: 7 }]
        );
        assert_eq!(
            m.step(
                2,
                Event::Fenced {
                    epoch: 7,
                    outcome: Fence::Failed
                }
            ),
            vec![Action::Fence { epoch: 7 }],
            "a backend that did not answer is fenced again"
        );
        assert_eq!(
            m.step(
                3,
                Event::Fenced {
                    epoch: 7,
                    outcome: Fence::Done
                }
            ),
            vec![Action::Reconcile { epoch: 7 }]
        );
        assert_eq!(m.role().name(), "reconciling");
        assert_eq!(
            m.step(4, Event::Reconciled { epoch: 7 }),
            vec![Action::Serve { epoch: 7 }]
        );
        assert_eq!(m.role(), &Role::Leader { epoch: 7 });
        assert_eq!(m.leader_changes, 1);
    }

    #[test]
    fn a_leader_demotes_on_evidence_only() {
        let stop = |why| vec![Action::StopServing { why }];
        let other = Some("b".to_string());
        for (event, want) in [
            (
                Event::Renewed(Renewal::Lost {
                    holder: other.clone(),
                }),
                stop(Demotion::LostKey {
                    holder: other.clone(),
                }),
            ),
            (
                Event::Holder(other.clone()),
                stop(Demotion::LostKey {
                    holder: other.clone(),
                }),
            ),
            (Event::FencedOut, stop(Demotion::FencedOut)),
            // etcd silent: keep serving (the fence keeps it safe).
            (Event::Renewed(Renewal::Unreachable), vec![]),
            (Event::Renewed(Renewal::Held), vec![]),
            (Event::Holder(None), vec![]),
            // Stale answers for another epoch.
            (Event::Reconciled { epoch: 3 }, vec![]),
            (
                Event::Fenced {
                    epoch: 3,
                    outcome: Fence::Superseded { by: 9 },
                },
                vec![],
            ),
            (
                Event::Switchover,
                vec![
                    Action::StopServing {
                        why: Demotion::Resigned,
                    },
                    Action::Resign,
                ],
            ),
        ] {
            let mut m = Machine::new(T, 0);
            leader(&mut m, 0, 5);
            let label = format!("{event:?}");
            assert_eq!(m.step(100, event), want, "{label}");
            assert_eq!(m.role().epoch().is_none(), !want.is_empty(), "{label}");
        }
    }

    /// A leader whose lease etcd dropped while nobody took the key asks
    /// for it again and, won, keeps serving under the new epoch; lost or
    /// unanswered, it demotes.
    #[test]
    fn a_leader_whose_lease_was_dropped_asks_for_the_key_again() {
        let cases = [
            (Campaign::Won { epoch: 9 }, Some(9), vec![]),
            (
                Campaign::Lost {
                    holder: Some("b".into()),
                },
                None,
                vec![Action::StopServing {
                    why: Demotion::LostKey {
                        holder: Some("b".into()),
                    },
                }],
            ),
            (
                Campaign::Unreachable,
                None,
                vec![Action::StopServing {
                    why: Demotion::LostKey { holder: None },
                }],
            ),
        ];
        for (answer, epoch, want) in cases {
            let mut m = Machine::new(T, 0);
            leader(&mut m, 0, 5);
            let changes = m.leader_changes;
            assert_eq!(
                m.step(100, Event::Renewed(Renewal::Lost { holder: None })),
                vec![Action::Campaign]
            );
            let label = format!("{answer:?}");
            assert_eq!(m.step(110, Event::Campaigned(answer)), want, "{label}");
            assert_eq!(m.role().epoch(), epoch, "{label}");
            assert_eq!(m.leader_changes, changes, "not a leader change: {label}");
        }
    }

    #[test]
    fn a_leader_renews_every_interval_even_without_answers() {
        let mut m = Machine::new(T, 0);
        leader(&mut m, 0, 5);
        assert_eq!(m.step(999, Event::Tick), vec![]);
        assert_eq!(m.step(1000, Event::Tick), vec![Action::Renew]);
        m.step(1500, Event::Renewed(Renewal::Unreachable));
        assert_eq!(m.lease_age(1500), Some(1500), "last renewed when it won");
        assert_eq!(m.step(2000, Event::Tick), vec![Action::Renew]);
        m.step(2010, Event::Renewed(Renewal::Held));
        assert_eq!(m.lease_age(2500), Some(490));
        assert_eq!(m.role(), &Role::Leader { epoch: 5 });
    }

    #[test]
    fn a_takeover_gives_up_when_a_newer_fence_is_found() {
        let mut m = Machine::new(T, 0);
        m.step(0, Event::Tick);
        m.step(0, Event::Campaigned(Campaign::Won { epoch: 4 }));
        assert_eq!(
            m.step(
                1,
                Event::Fenced {
                    epoch: 4,
                    outcome: Fence::Superseded { by: 6 }
                }
            ),
            vec![Action::StopServing {
                why: Demotion::Superseded { by: 6 }
            }]
        );
        assert_eq!(m.role().name(), "standby");
    }

    #[test]
    fn after_a_switchover_the_old_leader_waits_a_lease_before_campaigning() {
        let mut m = Machine::new(T, 0);
        leader(&mut m, 0, 5);
        m.step(100, Event::Switchover);
        assert_eq!(m.step(1100, Event::Tick), vec![Action::LookAtKey]);
        m.step(1100, Event::Holder(None));
        assert_eq!(m.step(1100, Event::Tick), vec![], "held off");
        assert_eq!(m.step(2100, Event::Tick), vec![Action::LookAtKey]);
        m.step(2100, Event::Holder(None));
        assert_eq!(m.step(3100, Event::Tick), vec![Action::Campaign]);
    }

    #[test]
    fn demotions_say_why() {
        assert!(Demotion::FencedOut.to_string().contains("fence"));
        assert!(Demotion::LostKey {
            holder: Some("b".into())
        }
        .to_string()
        .contains("\"b\""));
        assert_eq!(Timing::with_ttl(3000).renew_ms, 1000);
    }
}
