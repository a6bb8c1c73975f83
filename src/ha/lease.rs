//! Leader election on an etcd lease-bound key: campaign (grant a lease,
//! create the key if absent), renew (one keepalive), look at the holder,
//! resign (delete the key only while it is still ours). A thin IO layer:
//! when to campaign, renew or give up is decided by the HA state machine.

use super::etcd::{Cas, Client, Compare, Error, KeyValue, LeaseId, Watch};
use std::time::Duration;

/// The leadership key and what this controller writes into it.
pub struct Election {
    client: Client,
    key: Vec<u8>,
    ttl: Duration,
}

/// Held leadership: the lease and the key's creation, to resign by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leadership {
    pub lease: LeaseId,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub ttl: Duration,
}

/// The key's holder as etcd sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub kv: KeyValue,
    /// Time left on the holder's lease and the lease's granted TTL (`None`:
    /// the lease was gone by the time we asked).
    pub ttl: Option<(Duration, Duration)>,
}

/// How a campaign went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Won(Leadership),
    /// Someone holds the key (`None`: it vanished between the two steps;
    /// campaign again). Our lease was revoked.
    Lost(Option<KeyValue>),
}

impl Election {
    pub fn new(client: Client, key: &[u8], ttl: Duration) -> Election {
        Election {
            client,
            key: key.to_vec(),
            ttl,
        }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Grants a lease and creates the key with `name` bound to it if absent.
    pub fn campaign(&self, name: &[u8]) -> Result<Outcome, Error> {
        Ok(
            match self.client.create_on_new_lease(&self.key, name, self.ttl)? {
                Ok((lease, ttl, create_revision)) => Outcome::Won(Leadership {
                    lease,
                    value: name.to_vec(),
                    create_revision,
                    ttl,
                }),
                Err(holder) => Outcome::Lost(holder),
            },
        )
    }

    /// One keepalive: the lease's new TTL, or [`Error::LeaseNotFound`] if
    /// leadership is lost.
    pub fn renew(&self, l: &Leadership) -> Result<Duration, Error> {
        self.client
            .keepalive(l.lease)?
            .ok_or(Error::LeaseNotFound(l.lease))
    }

    /// Who holds the key now, `None` if nobody.
    pub fn holder(&self) -> Result<Option<Holder>, Error> {
        let Some(kv) = self.client.get(&self.key)? else {
            return Ok(None);
        };
        let ttl = if kv.lease != 0 {
            self.client
                .time_to_live(kv.lease)?
                .map(|t| (t.remaining, t.granted))
        } else {
            None
        };
        Ok(Some(Holder { kv, ttl }))
    }

    /// Deletes the key if it is still ours and revokes the lease; `false`
    /// if someone else held it already.
    pub fn resign(&self, l: &Leadership) -> Result<bool, Error> {
        let cas = self.client.compare_and_delete(
            &self.key,
            &[
                Compare::CreateRevision(l.create_revision),
                Compare::Value(l.value.clone()),
            ],
        )?;
        let _ = self.client.revoke(l.lease);
        Ok(matches!(cas, Cas::Applied { .. }))
    }

    /// Watches the key from `start_revision` (see [`Client::watch`]).
    pub fn watch(&self, start_revision: Option<i64>, idle: Duration) -> Result<Watch, Error> {
        self.client.watch(&self.key, start_revision, idle)
    }
}
