//! Two releases side by side on one cluster, during a rolling upgrade:
//! a node of the next release (one whose record format is newer) joins a
//! deployment of this one, writes records the nodes of this release read,
//! and logins go through both. Finishing the upgrade is refused while a
//! node of this release is alive (until its word lapses, if it crashed);
//! once finished, the deployment's records have the new format, a node of
//! this release cannot start, and one still running is told to stop.

mod common;

use std::time::Duration;

use common::hotp::{hotp_token, login};
use common::nodes::Node;
use common::nodes::T0;
use slsd::store::StoreError;
use slsd::store::cluster::FORMAT;
use slsd::store::cluster::memory::{MemoryRedis, run_now};
use slsd::store::sealed::Adopted;
use slsd::wire::{ErrorCode, Operation, Reply};

fn engine(node: &Node) -> &slsd::engine::Engine {
    match node {
        Node::Embedded(engine) | Node::Cluster(engine, _) => engine,
    }
}

/// What the node's poll of the deployment does (the server's task): says
/// it is alive, follows the format and the keyring.
fn poll(node: &Node, now: slsd::clock::Timestamp) -> Result<Adopted, StoreError> {
    run_now(engine(node).follow_deployment(now)).unwrap()
}

fn upgrade(node: &Node, finish: bool, now: slsd::clock::Timestamp) -> Reply {
    node.call_at(Operation::Upgrade { finish }, now)
}

/// `(format, release, nodes, behind)` of an `Upgrade` reply.
fn state(reply: Reply) -> (u64, u64, u16, u16) {
    match reply {
        Reply::Upgrade {
            format,
            release,
            nodes,
            behind,
        } => (format, release, nodes, behind),
        other => panic!("the upgrade's state: {other:?}"),
    }
}

#[test]
fn nodes_of_two_releases_serve_side_by_side_until_the_upgrade_is_finished() {
    let memory = std::sync::Arc::new(MemoryRedis::new());
    let dirs: Vec<_> = (0..4).map(|_| tempfile::tempdir().unwrap()).collect();
    let next = FORMAT + 1;
    // Two nodes of this release (one will crash), then one of the next.
    let old = Node::playing(&memory, dirs[0].path(), FORMAT, "old").unwrap();
    let crashed = Node::playing(&memory, dirs[1].path(), FORMAT, "crashed").unwrap();
    let new = Node::playing(&memory, dirs[2].path(), next, "new").unwrap();
    // The new node reads the deployment's format and writes it.
    let new_store = engine(&new).cluster_store().unwrap();
    assert_eq!(new_store.format(), FORMAT);
    // Each says it is alive until 3 polls after: T0 + 13 s.
    let said = T0.plus(Duration::from_secs(10));
    for node in [&old, &crashed, &new] {
        assert_eq!(poll(node, said).unwrap(), Adopted::Unchanged);
    }

    // A device enrolled through either node logs in through the other.
    let first = hotp_token(&old, "H1");
    let second = hotp_token(&new, "H2");
    assert!(login(&new, first, 0));
    assert!(login(&old, second, 0));
    assert!(login(&old, first, 1));
    assert!(login(&new, second, 1));

    assert_eq!(state(upgrade(&new, false, T0)), (FORMAT, next, 3, 2));
    // The older node sees no upgrade of its own to finish.
    assert_eq!(state(upgrade(&old, false, T0)), (FORMAT, FORMAT, 3, 0));
    // Not while a node of this release is alive: refused, nothing changed.
    let Reply::Error { code, message, .. } = upgrade(&new, true, T0) else {
        panic!("an upgrade finished under a node that reads only the older format")
    };
    assert_eq!(code, ErrorCode::InvalidArgument);
    assert!(message.contains("2 of the 3 nodes alive"), "{message}");
    assert_eq!(new_store.format(), FORMAT);

    // The old node stops (withdrawing its word); the crashed one never
    // does, and counts until its word lapses.
    run_now(engine(&old).leave_deployment()).unwrap().unwrap();
    assert_eq!(state(upgrade(&new, false, T0)), (FORMAT, next, 2, 1));
    assert!(matches!(upgrade(&new, true, T0), Reply::Error { .. }));
    let later = T0.plus(Duration::from_secs(60));
    assert_eq!(poll(&new, later).unwrap(), Adopted::Unchanged);
    assert_eq!(state(upgrade(&new, false, later)), (FORMAT, next, 1, 0));

    // Finished: the records have the new format from now on.
    assert_eq!(state(upgrade(&new, true, later)), (next, next, 1, 0));
    assert_eq!(new_store.format(), next);
    assert!(login(&new, first, 2));
    assert!(login(&new, second, 2));
    // Again: nothing more to do.
    assert_eq!(state(upgrade(&new, true, later)), (next, next, 1, 0));

    // A node of this release still running (it was only cut off) is told
    // at its next poll, and says nothing of itself first...
    let refused = poll(&crashed, later).unwrap_err();
    assert!(
        matches!(refused, StoreError::NewerFormat { found, supported }
            if found == next && supported == FORMAT),
        "{refused}"
    );
    assert_eq!(state(upgrade(&new, false, later)), (next, next, 1, 0));
    // ...and one starting now is refused.
    let Err(refused) = Node::playing(&memory, dirs[3].path(), FORMAT, "late") else {
        panic!("a node of the older release started on the newer format")
    };
    assert!(
        matches!(refused, StoreError::NewerFormat { .. }),
        "{refused}"
    );

    // A release newer still that finished its own upgrade (once this
    // one's node stopped) is not set back by this one's.
    run_now(engine(&new).leave_deployment()).unwrap().unwrap();
    let newest = Node::playing(&memory, dirs[3].path(), next + 1, "newest").unwrap();
    poll(&newest, later).unwrap();
    assert_eq!(
        state(upgrade(&newest, true, later)),
        (next + 1, next + 1, 1, 0)
    );
    let set_back = run_now(new_store.raise_format(FORMAT))
        .unwrap()
        .unwrap_err();
    assert!(
        matches!(set_back, StoreError::NewerFormat { .. }),
        "{set_back}"
    );
}

#[test]
fn the_upgrade_is_audited_and_one_node_on_its_database_has_none_to_finish() {
    let memory = std::sync::Arc::new(MemoryRedis::new());
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    // A deployment of this release (its first node records the format),
    // then a node of the next; the first never said it is alive.
    Node::playing(&memory, dirs[0].path(), FORMAT, "old").unwrap();
    let new = Node::playing(&memory, dirs[1].path(), FORMAT + 1, "new").unwrap();
    poll(&new, T0).unwrap();
    assert_eq!(
        state(upgrade(&new, true, T0)),
        (FORMAT + 1, FORMAT + 1, 1, 0)
    );
    let Reply::Audit(entries) = new.call(Operation::AuditLog {
        after: 0,
        limit: 100,
    }) else {
        panic!("the audit log")
    };
    let finished: Vec<_> = entries
        .iter()
        .filter(|entry| entry.action == "finish-upgrade")
        .collect();
    assert_eq!(finished.len(), 1, "{entries:?}");
    assert_eq!(finished[0].actor, "admin");
    assert!(
        finished[0]
            .detail
            .contains(&format!("format {}", FORMAT + 1))
    );

    let (embedded, _dir) = Node::both().swap_remove(0);
    let registry = slsd::store::embedded::registry::FORMAT;
    let reply = embedded.call(Operation::Upgrade { finish: true });
    assert_eq!(state(reply), (registry, registry, 1, 0));
}
