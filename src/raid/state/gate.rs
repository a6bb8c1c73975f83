//! The array's own commit lock, as a pure state: a transaction holds it
//! from its vote to its finish or abort; a recovery holds it while it
//! copies the last transactions and rejoins its backend. Votes wait while
//! a recovery finishes; a recovery (and a removal) waits until neither
//! holds it. The waiting is the IO shell's (`raid::commit`).

/// Who holds the array's commit lock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gate {
    /// A transaction is between vote and finish/abort.
    txn: bool,
    /// A recovery is finishing: votes wait.
    recovery: bool,
}

impl Gate {
    /// A vote may take the lock now.
    pub fn may_vote(&self) -> bool {
        !self.recovery
    }

    /// A vote took it (after [`Gate::may_vote`]).
    pub fn vote_entered(&mut self) {
        self.txn = true;
    }

    /// The transaction ended (finish, abort, a vote that prepared
    /// nothing); whether that freed the lock (wake whoever waits).
    /// Idempotent.
    pub fn txn_left(&mut self) -> bool {
        std::mem::replace(&mut self.txn, false)
    }

    /// Nobody holds it: a recovery or a removal may take it.
    pub fn is_free(&self) -> bool {
        !self.txn && !self.recovery
    }

    /// A recovery finishing takes it (after [`Gate::is_free`]) or lets it
    /// go.
    pub fn set_recovery(&mut self, finishing: bool) {
        self.recovery = finishing;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_may_take_the_commit_lock() {
        let mut g = Gate::default();
        assert!(g.is_free() && g.may_vote());
        g.vote_entered();
        assert!(!g.is_free(), "a transaction holds it");
        assert!(g.may_vote(), "the server's own commit lock orders votes");
        assert!(g.txn_left());
        assert!(!g.txn_left(), "leaving twice frees nothing more");
        g.set_recovery(true);
        assert!(
            !g.may_vote() && !g.is_free(),
            "votes wait for a finishing recovery"
        );
        g.set_recovery(false);
        assert!(g.is_free() && g.may_vote());
    }
}
