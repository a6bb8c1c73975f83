//! Controller membership in etcd: every controller of a cluster holds the
//! key `CLUSTER/members/NAME` on a lease of its own for as long as it runs,
//! leader or standby. So a second controller started under a name already
//! running is refused at start whatever the first one's role (the leader
//! key alone only shows a leader's name), and `ctl switchover --to NAME`
//! is checked against the controllers that are there.
//!
//! The lease is renewed with the controller's ticks; one lost while etcd
//! was away is replaced by a new one under the same key. A clean stop
//! revokes it, so the name is free at once; a killed controller's key
//! goes with its lease, within one TTL (a restart under the same name
//! waits that long, as it does for the leader key).

use super::etcd::{Client, Error, KeyValue, LeaseId};
use std::time::{Duration, Instant};

/// The key prefix of `cluster`'s members.
pub fn prefix(cluster: &str) -> Vec<u8> {
    format!("{cluster}/members/").into_bytes()
}

/// The member key of controller `name` in `cluster`.
pub fn key(cluster: &str, name: &str) -> Vec<u8> {
    format!("{cluster}/members/{name}").into_bytes()
}

/// The controllers' names from the member keys under `prefix`, sorted
/// (pure).
pub fn names(kvs: &[KeyValue], prefix: &[u8]) -> Vec<String> {
    let mut names: Vec<String> = kvs
        .iter()
        .filter_map(|kv| kv.key.strip_prefix(prefix))
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Whether a switchover may name `to` as the successor, given the
/// cluster's `members` (pure): it must be a running controller other than
/// this one (`me`).
pub fn successor_check(
    to: &str,
    me: &str,
    cluster: &str,
    members: &[String],
) -> Result<(), String> {
    if to == me {
        return Err(format!("controller {me} leads already"));
    }
    if members.iter().any(|m| m == to) {
        return Ok(());
    }
    let others: Vec<&str> = members
        .iter()
        .map(String::as_str)
        .filter(|m| *m != me)
        .collect();
    Err(format!(
        "no controller named {to:?} runs in cluster {cluster:?} (standbys there: {}); \
         nothing was changed",
        if others.is_empty() {
            "none".to_string()
        } else {
            others.join(", ")
        }
    ))
}

/// This controller's member key and the lease it holds it on.
#[derive(Debug)]
pub struct Membership {
    key: Vec<u8>,
    name: String,
    cluster: String,
    ttl: Duration,
    lease: Option<LeaseId>,
}

/// How taking the member key went.
enum Take {
    Held(LeaseId),
    /// Another lease holds it: a live controller of this name, or the
    /// key of one that died, until its lease runs out.
    Taken(KeyValue),
}

impl Membership {
    /// Take the member key before the server listens. A key under this
    /// name that stays renewed for a lease's TTL (plus one renewal) is a
    /// live controller of the same name: the start is refused.
    pub fn join(
        client: &Client,
        cluster: &str,
        name: &str,
        ttl: Duration,
        renew: Duration,
    ) -> Result<Membership, String> {
        let mut m = Membership {
            key: key(cluster, name),
            name: name.to_string(),
            cluster: cluster.to_string(),
            ttl,
            lease: None,
        };
        let unreachable = |e: Error| {
            format!(
                "[ha]: cannot register controller {name:?} in etcd ({e}); a controller does not \
                 start without etcd. Start etcd, or fix ha.endpoints"
            )
        };
        let deadline = Instant::now() + ttl + renew;
        let mut warned = false;
        loop {
            match m.take(client).map_err(unreachable)? {
                Take::Held(lease) => {
                    m.lease = Some(lease);
                    return Ok(m);
                }
                Take::Taken(kv) if Instant::now() >= deadline => {
                    return Err(format!(
                        "[ha]: another live controller named {name:?} runs in cluster \
                         {cluster:?} (it holds {:?} on etcd lease {}, and renews it): every \
                         controller needs a name of its own. Set a different ha.name, or stop \
                         the other controller",
                        String::from_utf8_lossy(&m.key),
                        kv.lease
                    ));
                }
                Take::Taken(kv) => {
                    if !warned {
                        log::warn!(
                            "[ha]: controller name {name:?} is registered in cluster {cluster:?} \
                             under etcd lease {}: a previous run that was killed, or another \
                             controller with the same name. Waiting up to one lease TTL ({ttl:?}) \
                             for it to expire",
                            kv.lease
                        );
                        warned = true;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }

    fn take(&self, client: &Client) -> Result<Take, Error> {
        match client.create_on_new_lease(&self.key, self.name.as_bytes(), self.ttl)? {
            Ok((lease, _, _)) => Ok(Take::Held(lease)),
            Err(Some(kv)) => Ok(Take::Taken(kv)),
            // Gone between the two steps: ask again.
            Err(None) => self.take(client),
        }
    }

    /// One renewal (each controller tick). A lease etcd dropped (it was
    /// away longer than the TTL) is replaced; errors are logged at debug
    /// level only: the election reports an unreachable etcd.
    pub fn keep(&mut self, client: &Client) {
        let alive = match self.lease {
            Some(l) => match client.keepalive(l) {
                Ok(Some(_)) => true,
                Ok(None) => false,
                Err(e) => {
                    log::debug!("[ha]: cannot renew the member lease: {e}");
                    return;
                }
            },
            None => false,
        };
        if alive {
            return;
        }
        match self.take(client) {
            Ok(Take::Held(lease)) => {
                if self.lease.is_some() {
                    log::info!(
                        "[ha]: controller {:?} registered again in cluster {:?} (etcd had \
                         dropped its member lease)",
                        self.name,
                        self.cluster
                    );
                }
                self.lease = Some(lease);
            }
            Ok(Take::Taken(kv)) => {
                self.lease = None;
                log::error!(
                    "[ha]: another controller named {:?} registered in cluster {:?} (etcd \
                     lease {}) while this one's registration had lapsed: two controllers \
                     share a name. Stop one of them and give it a name of its own",
                    self.name,
                    self.cluster,
                    kv.lease
                );
            }
            Err(e) => log::debug!("[ha]: cannot register again: {e}"),
        }
    }

    /// The cluster's running controllers, by name.
    pub fn members(&self, client: &Client) -> Result<Vec<String>, Error> {
        let p = prefix(&self.cluster);
        Ok(names(&client.get_prefix(&p)?, &p))
    }

    /// Give the name up (clean stop): revoking the lease deletes the key.
    pub fn leave(&mut self, client: &Client) {
        if let Some(l) = self.lease.take() {
            if let Err(e) = client.revoke(l) {
                log::warn!(
                    "[ha]: cannot unregister controller {:?} ({e}); its name is free again \
                     within one lease TTL",
                    self.name
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            value: Vec::new(),
            create_revision: 1,
            mod_revision: 1,
            version: 1,
            lease: 7,
        }
    }

    #[test]
    fn member_names_come_from_the_keys_under_the_prefix() {
        let p = prefix("site");
        assert_eq!(p, b"site/members/");
        assert_eq!(key("site", "ctl-a"), b"site/members/ctl-a");
        let kvs = [
            kv("site/members/ctl-b"),
            kv("site/members/ctl-a"),
            kv("site/members/"),
            kv("other/members/ctl-c"),
        ];
        assert_eq!(names(&kvs, &p), vec!["ctl-a", "ctl-b"]);
        assert!(names(&[], &p).is_empty());
    }

    #[test]
    fn a_successor_must_be_another_running_controller() {
        let members = vec!["ctl-a".to_string(), "ctl-b".to_string()];
        let cases: &[(&str, &[String], Result<(), &str>)] = &[
            ("ctl-b", &members, Ok(())),
            ("ctl-a", &members, Err("leads already")),
            (
                "ctl-x",
                &members,
                Err("no controller named \"ctl-x\" runs in cluster \"site\" (standbys there: ctl-b)"),
            ),
            ("ctl-b", &members[..1], Err("(standbys there: none)")),
        ];
        for (to, members, want) in cases {
            let got = successor_check(to, "ctl-a", "site", members);
            match (want, &got) {
                (Ok(()), Ok(())) => {}
                (Err(w), Err(g)) => assert!(g.contains(w), "{to}: {g}"),
                _ => panic!("{to} {members:?}: {got:?}"),
            }
        }
    }
}
