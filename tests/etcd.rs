//! The etcd client and the election (`zeoraid::ha`) against a real etcd
//! (issue #26): leases, keys, each compare-and-set outcome, a prefix watch
//! (including the delete a lease's expiry causes, and a compacted start),
//! elections between two controllers, and a three-member cluster losing
//! the member the client talks to (killed, or hung: only the deadline
//! tells). etcd comes from `$ZEORAID_ETCD` or `PATH`
//! (`tests/common/etcd.rs`); without it these tests fail, saying how to
//! install it.

mod common;

use common::etcd::Etcd;
use common::wait_for;
use std::time::{Duration, Instant};
use zeoraid::ha::etcd::{Cas, Client, Compare, Error, Options, WatchEvent};
use zeoraid::ha::lease::{Election, Outcome};

fn client(endpoints: Vec<String>) -> Client {
    Client::new(Options::new(endpoints)).expect("a client")
}

#[test]
fn leases_grant_keep_alive_revoke_and_expire() {
    let etcd = Etcd::start(1);
    let c = client(etcd.endpoints());

    let (lease, granted) = c.grant(Duration::from_secs(5)).expect("grant");
    assert_eq!(granted, Duration::from_secs(5));
    let ttl = c.time_to_live(lease).expect("ttl").expect("lease alive");
    assert_eq!(ttl.granted, Duration::from_secs(5));
    assert!(ttl.remaining <= ttl.granted && ttl.remaining >= Duration::from_secs(3));
    assert_eq!(
        c.keepalive(lease).expect("keepalive"),
        Some(Duration::from_secs(5))
    );
    c.put(b"lease/held", b"v", Some(lease))
        .expect("put on the lease");
    assert_eq!(
        c.get(b"lease/held").expect("get").expect("key").lease,
        lease
    );

    // Revoked: its key goes with it, and the lease is gone for good.
    assert!(c.revoke(lease).expect("revoke"));
    assert_eq!(c.get(b"lease/held").expect("get"), None);
    assert!(!c.revoke(lease).expect("second revoke"));
    assert_eq!(
        c.keepalive(lease).expect("keepalive of a revoked lease"),
        None
    );
    assert_eq!(c.time_to_live(lease).expect("ttl of a revoked lease"), None);
    // Writing on a lease that is gone says so, by its id.
    assert_eq!(
        c.put(b"lease/late", b"v", Some(lease)),
        Err(Error::LeaseNotFound(lease))
    );

    // Expired: nobody renews it, and its key vanishes after the TTL.
    let (short, granted) = c.grant(Duration::from_secs(1)).expect("grant");
    c.put(b"lease/short", b"v", Some(short)).expect("put");
    let t0 = Instant::now();
    wait_for(
        Duration::from_secs(10),
        "the expired lease's key vanishes",
        || c.get(b"lease/short").expect("get").is_none().then_some(()),
    );
    assert!(
        t0.elapsed() + Duration::from_millis(300) >= granted,
        "{t0:?}"
    );
    assert_eq!(c.keepalive(short).expect("keepalive"), None);
}

#[test]
fn keys_put_get_delete() {
    let etcd = Etcd::start(1);
    let c = client(etcd.endpoints());
    // Keys and values are bytes, not text.
    let key: &[u8] = b"bin/\x00\xff\xfe";
    let value: &[u8] = &[0, 1, 2, 0xff, b'=', b'\n'];

    assert_eq!(c.get(key).expect("get"), None);
    let r1 = c.put(key, value, None).expect("put");
    let kv = c.get(key).expect("get").expect("the key");
    assert_eq!((kv.key.as_slice(), kv.value.as_slice()), (key, value));
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r1, 1)
    );
    assert_eq!(kv.lease, 0);

    let r2 = c.put(key, b"", None).expect("put an empty value");
    assert!(r2 > r1);
    let kv = c.get(key).expect("get").expect("the key");
    assert_eq!(kv.value, b"");
    assert_eq!(
        (kv.create_revision, kv.mod_revision, kv.version),
        (r1, r2, 2)
    );

    assert_eq!(c.delete(key).expect("delete"), 1);
    assert_eq!(c.get(key).expect("get"), None);
    assert_eq!(c.delete(key).expect("delete again"), 0);
}

#[test]
fn compare_and_set_outcomes() {
    let etcd = Etcd::start(1);
    let c = client(etcd.endpoints());
    let (lease, _) = c.grant(Duration::from_secs(30)).expect("grant");

    // create_if_absent: the first wins, the second sees the holder.
    let Cas::Applied { revision: created } =
        c.create_if_absent(b"cas/k", b"first", lease).expect("txn")
    else {
        panic!("the first create must win")
    };
    match c.create_if_absent(b"cas/k", b"second", lease).expect("txn") {
        Cas::Stale(Some(kv)) => {
            assert_eq!(kv.value, b"first");
            assert_eq!(kv.create_revision, created);
            assert_eq!(kv.lease, lease);
        }
        other => panic!("the second create must lose to the holder: {other:?}"),
    }

    // compare_and_put on the mod revision: won once, then stale.
    let Cas::Applied { revision: moved } = c
        .compare_and_put(b"cas/k", &[Compare::ModRevision(created)], b"moved", None)
        .expect("txn")
    else {
        panic!("a put at the current revision must win")
    };
    match c
        .compare_and_put(b"cas/k", &[Compare::ModRevision(created)], b"late", None)
        .expect("txn")
    {
        Cas::Stale(Some(kv)) => {
            assert_eq!(kv.value, b"moved");
            assert_eq!(kv.mod_revision, moved);
            assert_eq!(kv.lease, 0, "the winning put dropped the lease");
        }
        other => panic!("a put at an old revision must lose: {other:?}"),
    }
    // The lease compare: the key is on no lease now.
    assert!(matches!(
        c.compare_and_put(b"cas/k", &[Compare::Lease(lease)], b"x", None),
        Ok(Cas::Stale(Some(_)))
    ));

    // compare_and_delete: a wrong value loses, the right one deletes.
    match c
        .compare_and_delete(b"cas/k", &[Compare::Value(b"first".to_vec())])
        .expect("txn")
    {
        Cas::Stale(Some(kv)) => assert_eq!(kv.value, b"moved"),
        other => panic!("a delete on a stale value must lose: {other:?}"),
    }
    assert!(matches!(
        c.compare_and_delete(
            b"cas/k",
            &[
                Compare::Value(b"moved".to_vec()),
                Compare::CreateRevision(created)
            ]
        ),
        Ok(Cas::Applied { .. })
    ));
    assert_eq!(c.get(b"cas/k").expect("get"), None);
    assert_eq!(
        c.compare_and_delete(b"cas/k", &[Compare::Value(b"moved".to_vec())]),
        Ok(Cas::Stale(None))
    );

    // A create on a revoked lease is refused by the lease's id.
    c.revoke(lease).expect("revoke");
    assert_eq!(
        c.create_if_absent(b"cas/k", b"v", lease),
        Err(Error::LeaseNotFound(lease))
    );
}

#[test]
fn watch_sees_puts_and_deletes_under_a_prefix_including_lease_expiry() {
    let etcd = Etcd::start(1);
    let c = client(etcd.endpoints());
    let w = c
        .watch_prefix(b"arr/", None, Duration::from_secs(2))
        .expect("watch");
    let (lease, _) = c.grant(Duration::from_secs(1)).expect("grant");
    let ra = c.put(b"arr/a", b"1", None).expect("put");
    c.put(b"other", b"not watched", None).expect("put");
    let rb = c.put(b"arr/b", b"2", Some(lease)).expect("put");
    c.delete(b"arr/a").expect("delete");

    let next = || {
        w.events
            .recv_timeout(Duration::from_secs(10))
            .expect("a watch event within 10 s")
    };
    match next() {
        WatchEvent::Put(kv) => {
            assert_eq!(
                (kv.key.as_slice(), kv.value.as_slice()),
                (&b"arr/a"[..], &b"1"[..])
            );
            assert_eq!(kv.mod_revision, ra);
        }
        e => panic!("want the put of arr/a, got {e:?}"),
    }
    match next() {
        WatchEvent::Put(kv) => {
            assert_eq!(kv.key, b"arr/b");
            assert_eq!((kv.mod_revision, kv.lease), (rb, lease));
        }
        e => panic!("want the put of arr/b, got {e:?}"),
    }
    match next() {
        WatchEvent::Delete { key, revision } => {
            assert_eq!(key, b"arr/a");
            assert!(revision > rb);
        }
        e => panic!("want the delete of arr/a, got {e:?}"),
    }
    // Nobody renews the lease: its key's delete comes by itself.
    match next() {
        WatchEvent::Delete { key, .. } => assert_eq!(key, b"arr/b"),
        e => panic!("want the delete of arr/b by lease expiry, got {e:?}"),
    }
    drop(w); // cancels and joins the etcd-watch thread

    // A watch from a revision compacted away says so, with the revision
    // to re-read from, and ends.
    c.compact(rb).expect("compact");
    let w = c
        .watch_prefix(b"arr/", Some(ra), Duration::from_secs(2))
        .expect("watch");
    assert_eq!(
        w.events.recv_timeout(Duration::from_secs(5)),
        Ok(WatchEvent::Compacted {
            compact_revision: rb
        })
    );
    assert!(w.events.recv_timeout(Duration::from_secs(1)).is_err());
}

#[test]
fn election_one_wins_the_other_sees_the_holder_and_resign_hands_over() {
    let etcd = Etcd::start(1);
    let ttl = Duration::from_secs(5);
    let a = Election::new(client(etcd.endpoints()), b"ctl/leader", ttl);
    let b = Election::new(client(etcd.endpoints()), b"ctl/leader", ttl);

    let Outcome::Won(la) = a.campaign(b"a").expect("campaign") else {
        panic!("the first campaign must win")
    };
    match b.campaign(b"b").expect("campaign") {
        Outcome::Lost(Some(kv)) => assert_eq!(kv.value, b"a"),
        o => panic!("the second campaign must see a: {o:?}"),
    }
    let h = b.holder().expect("holder").expect("someone holds it");
    assert_eq!((h.kv.value.as_slice(), h.kv.lease), (&b"a"[..], la.lease));
    let (left, granted) = h.ttl.expect("the holder's lease is alive");
    assert_eq!(granted, ttl);
    assert!(left <= ttl);
    assert_eq!(a.renew(&la).expect("renew"), ttl);

    // Resigning hands over at once: b wins without waiting for a TTL.
    let t0 = Instant::now();
    assert!(a.resign(&la).expect("resign"));
    let Outcome::Won(lb) = b.campaign(b"b").expect("campaign") else {
        panic!("b must win right after a resigned")
    };
    assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    assert_eq!(a.holder().expect("holder").expect("b").kv.value, b"b");
    // a's leadership is over, and a cannot resign b's.
    assert_eq!(a.renew(&la), Err(Error::LeaseNotFound(la.lease)));
    assert!(!a.resign(&la).expect("resign again"));
    assert_eq!(a.holder().expect("holder").expect("b").kv.lease, lb.lease);
}

#[test]
fn election_passes_to_the_other_when_the_winner_stops_renewing() {
    let etcd = Etcd::start(1);
    let ttl = Duration::from_secs(1);
    let a = Election::new(client(etcd.endpoints()), b"ctl/leader", ttl);
    let b = Election::new(client(etcd.endpoints()), b"ctl/leader", ttl);
    let Outcome::Won(la) = a.campaign(b"a").expect("campaign") else {
        panic!("the first campaign must win")
    };
    // a renews for a while: b keeps losing, well past one TTL.
    let until = Instant::now() + la.ttl * 2;
    let mut t0 = Instant::now();
    while Instant::now() < until {
        a.renew(&la).expect("a renews");
        t0 = Instant::now();
        assert!(matches!(b.campaign(b"b"), Ok(Outcome::Lost(Some(_)))));
        std::thread::sleep(Duration::from_millis(200));
    }
    // a stops: b wins once the lease has run out.
    let lb = wait_for(Duration::from_secs(10), "b wins after a's TTL", || match b
        .campaign(b"b")
        .expect("campaign")
    {
        Outcome::Won(l) => Some(l),
        Outcome::Lost(_) => None,
    });
    let took = t0.elapsed();
    eprintln!("b won {took:?} after a's last renewal (TTL {:?})", la.ttl);
    assert!(took + Duration::from_millis(300) >= la.ttl, "{took:?}");
    assert_eq!(b.holder().expect("holder").expect("b").kv.value, b"b");
    // a learns it, typed: its lease is gone.
    assert_eq!(a.renew(&la), Err(Error::LeaseNotFound(la.lease)));
    assert!(!a.resign(&la).expect("resign"));
    assert!(b.renew(&lb).is_ok());
}

#[test]
fn a_three_member_cluster_survives_losing_the_member_in_use() {
    let mut etcd = Etcd::start(3);
    // The leader first: the client talks to it, and killing it forces a
    // raft election too.
    let probe = client(etcd.endpoints());
    let statuses = probe.status();
    let leader = statuses
        .iter()
        .position(|(_, s)| matches!(s, Ok(m) if m.member_id == m.leader))
        .unwrap_or_else(|| panic!("no member says it leads: {statuses:?}"));
    let mut eps = etcd.endpoints();
    eps.rotate_left(leader);
    let ttl = Duration::from_secs(5);
    let a = Election::new(client(eps.clone()), b"ctl/leader", ttl);
    let b = Election::new(client(eps.clone()), b"ctl/leader", ttl);
    let Outcome::Won(la) = a.campaign(b"a").expect("campaign") else {
        panic!("the first campaign must win")
    };
    let before = a.client().put(b"state", b"before", None).expect("put");
    assert_eq!(a.client().current_endpoint(), eps[0]);
    let w = a
        .client()
        .watch(b"state", None, Duration::from_secs(1))
        .expect("watch");

    etcd.kill(leader);
    // Within a few seconds (a raft election) everything works again
    // through the other members.
    let t0 = Instant::now();
    let renewed = wait_for(Duration::from_secs(10), "renew after the kill", || {
        a.renew(&la).ok()
    });
    eprintln!("renewed {:?} after the leader was killed", t0.elapsed());
    assert!(renewed > Duration::ZERO);
    assert_ne!(a.client().current_endpoint(), eps[0]);
    assert_eq!(
        a.client().get(b"state").expect("get").expect("state").value,
        b"before"
    );
    // The watch on the dead member says it is lost; watched again from
    // the last revision it saw + 1, nothing is missed.
    match w.events.recv_timeout(Duration::from_secs(5)) {
        Ok(WatchEvent::Lost(_)) => {}
        e => panic!("want the watch lost with its member, got {e:?}"),
    }
    drop(w);
    let after = a.client().put(b"state", b"after", None).expect("put");
    let w = a
        .client()
        .watch(b"state", Some(before + 1), Duration::from_secs(1))
        .expect("watch again");
    match w.events.recv_timeout(Duration::from_secs(5)) {
        Ok(WatchEvent::Put(kv)) => assert_eq!(
            (kv.value.as_slice(), kv.mod_revision),
            (&b"after"[..], after)
        ),
        e => panic!("want the put made while nobody watched, got {e:?}"),
    }
    drop(w);
    // The election still holds: b loses to a, and sees a.
    match b.campaign(b"b").expect("campaign") {
        Outcome::Lost(Some(kv)) => {
            assert_eq!((kv.value.as_slice(), kv.lease), (&b"a"[..], la.lease))
        }
        o => panic!("a must still hold the key: {o:?}"),
    }
    assert_eq!(b.holder().expect("holder").expect("a").kv.value, b"a");
    assert!(a.resign(&la).expect("resign"));
    assert!(matches!(b.campaign(b"b"), Ok(Outcome::Won(_))));
    // The survivors report status; the dead one says it is unreachable.
    let st = b.client().status();
    assert!(matches!(st[0].1, Err(Error::Unreachable(_))), "{st:?}");
    assert!(st[1..].iter().all(|(_, s)| s.is_ok()), "{st:?}");
}

#[test]
fn a_hung_member_is_passed_over_within_the_lease() {
    let mut etcd = Etcd::start(3);
    let ttl = Duration::from_secs(5);
    let mut opts = Options::new(etcd.endpoints());
    opts.request_timeout = Duration::from_millis(700);
    let a = Election::new(Client::new(opts).expect("a client"), b"ctl/leader", ttl);
    let Outcome::Won(la) = a.campaign(b"a").expect("campaign") else {
        panic!("the first campaign must win")
    };
    assert_eq!(a.client().current_endpoint(), etcd.endpoint(0));
    let w = a
        .client()
        .watch(b"ctl/leader", None, Duration::from_secs(1))
        .expect("watch");
    // Member 0 stops answering but keeps its sockets open: no connection
    // error, only the deadline tells.
    etcd.freeze(0, false);
    let t0 = Instant::now();
    let renewed = wait_for(
        Duration::from_secs(10),
        "renew past the hung member",
        || a.renew(&la).ok(),
    );
    let took = t0.elapsed();
    eprintln!("renewed {took:?} after member 0 hung");
    assert!(renewed > Duration::ZERO);
    assert!(took < ttl, "renewal took {took:?}, longer than the lease");
    assert_ne!(a.client().current_endpoint(), etcd.endpoint(0));
    // Later calls go to the member that answered, without waiting again.
    let t1 = Instant::now();
    a.renew(&la).expect("renew");
    assert!(
        t1.elapsed() < Duration::from_millis(500),
        "{:?}",
        t1.elapsed()
    );
    // The watch on the hung member is silent; its idle probe finds out.
    match w.events.recv_timeout(Duration::from_secs(5)) {
        Ok(WatchEvent::Lost(_)) => {}
        e => panic!("want the watch on the hung member lost, got {e:?}"),
    }
    drop(w);
    etcd.freeze(0, true);
    assert!(a.resign(&la).expect("resign"));
}
