//! Each backend's role in the array, and the array's membership: owned
//! here and changed only by [`Event`]s, each of which returns the
//! [`Ready`] the IO shell must carry out — write the state file, log,
//! count an error — the way raft-rs's `RawNode` takes a step and hands out
//! a `Ready`. No IO, no clock, no lock: `raid::Core` keeps one `Roles`
//! behind one mutex, performs each `Ready` under it (so the state file is
//! written in the order the roles changed), and publishes every backend's
//! role to the backend's own atomic for the read path.
//!
//! The rules, all here:
//! - only an optimal backend is degraded by a failure (the first reason
//!   stays); a verify that finds a difference degrades whatever the
//!   backend was;
//! - a recovery takes a degraded backend (keeping the reason it was
//!   degraded for), and ends optimal or degraded ("recovery failed");
//! - an added backend joins degraded; a removed one leaves the roles it
//!   had, and the membership remembers both for the state file;
//! - the state file holds every backend that is not optimal, with its
//!   reason (a recovering one as "recovery did not finish").

use super::reason::Reason;
use super::{array_state_of, ArrayState, BackendState, FailMode};
use crate::raid::statefile::{Recipe, Saved};

/// One backend as the roles know it.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub name: String,
    pub state: BackendState,
    /// Taken out at runtime (its position stays, never reused).
    pub removed: bool,
}

/// What happened to a backend.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A call failed, it disagreed, it missed its deadline, the operator
    /// disabled it, it told of a foreign write...: degraded if optimal.
    Failed { at: usize, reason: Reason },
    /// A verify found it different from an optimal backend.
    Diverged { at: usize, reason: Reason },
    /// A recovery took it (it holds none of the array's transactions).
    RecoveryStarted { at: usize },
    /// The recovery rejoined it under the array's commit lock.
    Recovered { at: usize },
    /// The recovery that had taken it failed.
    RecoveryFailed { at: usize, why: String },
    /// A controller taking over reached it again and it was degraded for
    /// a reason a takeover judges again ([`Reason::rejudged_at_takeover`]):
    /// optimal, to be compared by its last transaction.
    Rejoined { at: usize },
    /// Added at runtime (at the next position), as `recipe` describes it;
    /// `problem`: why it cannot be reached yet.
    Added {
        name: String,
        recipe: Recipe,
        problem: Option<String>,
    },
    /// Removed at runtime. `added`: it had been added at runtime (then the
    /// membership forgets it, rather than remembering its removal).
    Removed { at: usize, added: bool },
    /// Nothing changed, but the state file must say what is (the array
    /// closes, or starts with backends that are not optimal).
    Persist,
}

/// How loud a line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Error,
    Warn,
    Info,
}

/// What the IO shell does after a step.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Ready {
    /// Write this to the state file.
    pub persist: Option<Saved>,
    /// Log these.
    pub log: Vec<(Level, String)>,
    /// Count an error (a degradation, a failed recovery) for these.
    pub errors: Vec<usize>,
    /// The event changed a backend's role.
    pub changed: bool,
}

/// The roles of an array's backends, and its membership.
#[derive(Clone, Debug)]
pub struct Roles {
    array: String,
    min_optimal: usize,
    fail_mode: FailMode,
    members: Vec<Member>,
    /// Backends added at runtime, as their opener described them.
    added: Vec<Recipe>,
    /// Backends of the configuration removed at runtime.
    removed: Vec<String>,
}

impl Roles {
    /// The roles at open: each backend's first state, and the membership
    /// the state file remembered.
    pub fn new(
        array: &str,
        min_optimal: usize,
        fail_mode: FailMode,
        members: Vec<(String, BackendState)>,
        added: Vec<Recipe>,
        removed: Vec<String>,
    ) -> Roles {
        Roles {
            array: array.to_string(),
            min_optimal,
            fail_mode,
            members: members
                .into_iter()
                .map(|(name, state)| Member {
                    name,
                    state,
                    removed: false,
                })
                .collect(),
            added,
            removed,
        }
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// Backend `at`'s state (`Optimal` for a position it does not have).
    pub fn state(&self, at: usize) -> BackendState {
        self.members
            .get(at)
            .map(|m| m.state.clone())
            .unwrap_or(BackendState::Optimal)
    }

    /// How many backends are in the array (not counting removed ones).
    pub fn total(&self) -> usize {
        self.members.iter().filter(|m| !m.removed).count()
    }

    /// The array's state, given which backends are open (a backend whose
    /// storage is not open counts as not optimal).
    pub fn array_state(&self, open: impl Fn(usize) -> bool) -> ArrayState {
        let live = || self.members.iter().enumerate().filter(|(_, m)| !m.removed);
        let optimal = live()
            .filter(|(i, m)| m.state.is_optimal() && open(*i))
            .count();
        let recovering = live()
            .filter(|(_, m)| matches!(m.state, BackendState::Recovering(_)))
            .count();
        array_state_of(optimal, recovering, self.total(), self.min_optimal)
    }

    /// What the state file holds now.
    pub fn saved(&self) -> Saved {
        let mut saved = Saved {
            added: self.added.clone(),
            removed: self.removed.clone(),
            ..Saved::default()
        };
        for m in self.members.iter().filter(|m| !m.removed) {
            match &m.state {
                BackendState::Optimal => {}
                BackendState::Degraded(why) => {
                    saved.degraded.insert(m.name.clone(), why.to_string());
                }
                BackendState::Recovering(why) => {
                    saved
                        .degraded
                        .insert(m.name.clone(), format!("recovery did not finish ({why})"));
                }
            }
        }
        saved
    }

    /// Advance by `event`; `open` says which backends' storages are open
    /// (for the array's state in the log lines).
    pub fn step(&mut self, event: Event, open: impl Fn(usize) -> bool) -> Ready {
        let mut ready = Ready::default();
        match event {
            Event::Failed { at, reason } => {
                let Some(m) = self.members.get_mut(at) else {
                    return ready;
                };
                if !m.state.is_optimal() || m.removed {
                    return ready;
                }
                m.state = BackendState::Degraded(reason.clone());
                let name = m.name.clone();
                ready.errors.push(at);
                self.degraded_lines(&mut ready, &name, &reason, "degraded", &open);
            }
            Event::Diverged { at, reason } => {
                let Some(m) = self.members.get_mut(at) else {
                    return ready;
                };
                let verb = if m.state.is_optimal() {
                    "degraded"
                } else {
                    "stays degraded"
                };
                m.state = BackendState::Degraded(reason.clone());
                let name = m.name.clone();
                self.degraded_lines(&mut ready, &name, &reason, verb, &open);
            }
            Event::RecoveryStarted { at } => {
                let Some(m) = self.members.get_mut(at) else {
                    return ready;
                };
                let was = match &m.state {
                    BackendState::Degraded(r) => r.clone(),
                    // Optimal but not open: recovered to be opened again.
                    BackendState::Optimal => Reason::NotOpen,
                    BackendState::Recovering(_) => return ready,
                };
                m.state = BackendState::Recovering(was);
            }
            Event::Recovered { at } => {
                let Some(m) = self.members.get_mut(at) else {
                    return ready;
                };
                if !matches!(m.state, BackendState::Recovering(_)) {
                    return ready;
                }
                m.state = BackendState::Optimal;
            }
            Event::Rejoined { at } => {
                let Some(m) = self.members.get_mut(at) else {
                    return ready;
                };
                match &m.state {
                    BackendState::Degraded(r) if r.rejudged_at_takeover() => {
                        ready.log.push((
                            Level::Warn,
                            format!(
                                "RAID array {:?}: backend {:?} was degraded ({r}); taking over, \
                                 this controller reached it again and judges it by its last \
                                 transaction",
                                self.array, m.name
                            ),
                        ));
                        m.state = BackendState::Optimal;
                    }
                    _ => return ready,
                }
            }
            Event::RecoveryFailed { at, why } => {
                let Some(m) = self.members.get_mut(at) else {
                    return ready;
                };
                if !matches!(m.state, BackendState::Recovering(_)) {
                    return ready;
                }
                m.state = BackendState::Degraded(Reason::RecoveryFailed(why));
                ready.errors.push(at);
            }
            Event::Added {
                name,
                recipe,
                problem,
            } => {
                self.removed.retain(|n| n != &name);
                self.added.retain(|r| r.name() != Some(&name));
                self.added.push(recipe);
                self.members.push(Member {
                    name,
                    state: BackendState::Degraded(Reason::Added(problem)),
                    removed: false,
                });
            }
            Event::Removed { at, added } => {
                let Some(m) = self.members.get_mut(at) else {
                    return ready;
                };
                if m.removed {
                    return ready;
                }
                m.removed = true;
                let name = m.name.clone();
                if added {
                    self.added.retain(|r| r.name() != Some(&name));
                } else if !self.removed.contains(&name) {
                    self.removed.push(name);
                }
            }
            Event::Persist => {
                ready.persist = Some(self.saved());
                return ready;
            }
        }
        ready.changed = true;
        ready.persist = Some(self.saved());
        ready
    }

    fn degraded_lines(
        &self,
        ready: &mut Ready,
        name: &str,
        reason: &Reason,
        verb: &str,
        open: &impl Fn(usize) -> bool,
    ) {
        let optimal = self
            .members
            .iter()
            .enumerate()
            .filter(|(i, m)| !m.removed && m.state.is_optimal() && open(*i))
            .count();
        ready.log.push((
            Level::Error,
            format!(
                "RAID array {:?}: backend {name:?} {verb}: {reason}; {optimal} of {} backends \
                 optimal, array {}",
                self.array,
                self.total(),
                self.array_state(open)
            ),
        ));
        if optimal < self.min_optimal.max(1) {
            ready.log.push((
                Level::Error,
                format!(
                    "RAID array {:?} has failed: fewer than min-optimal = {} optimal backends; {}",
                    self.array,
                    self.min_optimal,
                    match self.fail_mode {
                        FailMode::Close => "every request is refused until backends are repaired and the server restarted",
                        FailMode::ReadOnly => "it serves reads only (writes get ReadOnlyError) until backends are repaired",
                    }
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(names: &[&str]) -> Roles {
        Roles::new(
            "1",
            1,
            FailMode::Close,
            names
                .iter()
                .map(|n| (n.to_string(), BackendState::Optimal))
                .collect(),
            vec![],
            vec![],
        )
    }

    fn labels(r: &Roles) -> Vec<&'static str> {
        r.members().iter().map(|m| m.state.label()).collect()
    }

    fn all_open(_: usize) -> bool {
        true
    }

    fn failed(at: usize) -> Event {
        Event::Failed {
            at,
            reason: Reason::Disabled,
        }
    }

    #[test]
    fn a_failure_degrades_an_optimal_backend_once_and_persists_it() {
        let mut r = roles(&["a", "b"]);
        let ready = r.step(failed(1), all_open);
        assert_eq!(labels(&r), ["optimal", "degraded"]);
        assert_eq!(ready.errors, vec![1]);
        let saved = ready.persist.expect("the state file is written");
        assert_eq!(saved.degraded.len(), 1);
        assert!(saved.degraded["b"].starts_with("disabled by the operator"));
        assert!(
            ready.log[0].1.contains("backend \"b\" degraded"),
            "{:?}",
            ready.log
        );
        // The first reason stays; nothing to write again.
        let again = r.step(
            Event::Failed {
                at: 1,
                reason: Reason::NotOpen,
            },
            all_open,
        );
        assert_eq!(again, Ready::default());
        assert_eq!(r.state(1), BackendState::Degraded(Reason::Disabled));
    }

    #[test]
    fn the_last_optimal_backend_failing_says_the_array_failed() {
        let mut r = roles(&["a"]);
        let ready = r.step(failed(0), all_open);
        assert_eq!(r.array_state(all_open), ArrayState::Failed);
        assert!(ready.log.iter().any(|(_, l)| l.contains("has failed")));
    }

    #[test]
    fn a_takeover_rejoins_only_what_it_judges_again() {
        let lost = |at| Event::Failed {
            at,
            reason: Reason::ConnectionLost("x".into()),
        };
        let cases: Vec<(Vec<Event>, [&str; 2])> = vec![
            (
                vec![lost(1), Event::Rejoined { at: 1 }],
                ["optimal", "optimal"],
            ),
            // Disabled by the operator: stays out.
            (
                vec![failed(1), Event::Rejoined { at: 1 }],
                ["optimal", "degraded"],
            ),
            (vec![Event::Rejoined { at: 1 }], ["optimal", "optimal"]),
            (vec![Event::Rejoined { at: 7 }], ["optimal", "optimal"]),
        ];
        for (events, labels) in cases {
            let mut r = roles(&["a", "b"]);
            for e in events.clone() {
                r.step(e, all_open);
            }
            let got = [r.state(0).label(), r.state(1).label()];
            assert_eq!(got, labels, "{events:?}");
        }
    }

    /// (events, final labels): the recovery's transitions and what does
    /// not apply.
    #[test]
    fn recovery_transitions_table() {
        let cases: Vec<(Vec<Event>, [&str; 2])> = vec![
            (
                vec![Event::RecoveryStarted { at: 1 }],
                ["optimal", "recovering"],
            ),
            (
                vec![failed(1), Event::RecoveryStarted { at: 1 }],
                ["optimal", "recovering"],
            ),
            (
                vec![
                    failed(1),
                    Event::RecoveryStarted { at: 1 },
                    Event::Recovered { at: 1 },
                ],
                ["optimal", "optimal"],
            ),
            (
                vec![
                    failed(1),
                    Event::RecoveryStarted { at: 1 },
                    Event::RecoveryFailed {
                        at: 1,
                        why: "x".into(),
                    },
                ],
                ["optimal", "degraded"],
            ),
            // Recovered only from recovering; a failure does not touch a
            // recovering backend.
            (
                vec![failed(1), Event::Recovered { at: 1 }],
                ["optimal", "degraded"],
            ),
            (
                vec![Event::RecoveryStarted { at: 1 }, failed(1)],
                ["optimal", "recovering"],
            ),
            // A verify's difference degrades whatever it was.
            (
                vec![
                    Event::RecoveryStarted { at: 1 },
                    Event::Diverged {
                        at: 1,
                        reason: Reason::NotOpen,
                    },
                ],
                ["optimal", "degraded"],
            ),
            // Positions it does not have change nothing.
            (
                vec![failed(7), Event::Recovered { at: 9 }],
                ["optimal", "optimal"],
            ),
        ];
        for (events, want) in cases {
            let mut r = roles(&["a", "b"]);
            for e in events.clone() {
                r.step(e, all_open);
            }
            assert_eq!(labels(&r), want, "{events:?}");
        }
        let mut r = roles(&["a", "b"]);
        r.step(failed(1), all_open);
        r.step(Event::RecoveryStarted { at: 1 }, all_open);
        assert_eq!(
            r.saved().degraded["b"],
            format!("recovery did not finish ({})", Reason::Disabled)
        );
    }

    #[test]
    fn membership_remembers_additions_and_removals() {
        let mut r = roles(&["a", "b"]);
        let mut recipe = Recipe::default();
        recipe.0.insert("name".into(), "c".into());
        r.step(
            Event::Added {
                name: "c".into(),
                recipe: recipe.clone(),
                problem: None,
            },
            all_open,
        );
        assert_eq!(labels(&r), ["optimal", "optimal", "degraded"]);
        assert_eq!(r.saved().added, vec![recipe.clone()]);
        r.step(
            Event::Removed {
                at: 1,
                added: false,
            },
            all_open,
        );
        assert_eq!(r.total(), 2);
        assert_eq!(r.saved().removed, vec!["b".to_string()]);
        // A removed backend fails no more, and is not in the file.
        assert_eq!(r.step(failed(1), all_open), Ready::default());
        r.step(Event::Removed { at: 2, added: true }, all_open);
        let saved = r.saved();
        assert!(
            saved.added.is_empty() && saved.degraded.is_empty(),
            "{saved:?}"
        );
        // Added again under a removed name: the removal is forgotten.
        r.step(
            Event::Added {
                name: "b".into(),
                recipe,
                problem: Some("down".into()),
            },
            all_open,
        );
        assert!(r.saved().removed.is_empty());
    }

    #[test]
    fn a_backend_not_open_is_not_optimal_for_the_array() {
        let r = roles(&["a", "b"]);
        assert_eq!(r.array_state(|i| i == 0), ArrayState::Degraded);
        assert_eq!(r.array_state(all_open), ArrayState::Optimal);
    }
}
