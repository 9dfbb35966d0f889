//! Drain: every session this node masters goes to its backup (or the least-loaded node), copy
//! then Promote, before the daemon stops.

use super::*;

impl State {
    /// `scd drain`: hand off every session this node masters, then let the backups move.
    pub(super) async fn drain(self: Rc<Self>, done: std::sync::mpsc::Sender<String>) {
        self.shared().draining.store(true, Ordering::Relaxed);
        info!("cluster: draining: handing every session to other nodes");
        let items: Vec<_> = self
            .ask_cores(CoreMsg::Dump)
            .await
            .into_iter()
            .flatten()
            .collect();
        let mut moved = 0u64;
        let mut failed = 0u64;
        let mut last = Commit(0);
        for item in items {
            let hash = item.hash;
            let p = self.placement(&hash);
            if p.is_some_and(|p| p.master.is_some() && p.master != Some(self.me)) {
                // A copy this node holds for another master: that master picks a new backup
                // when it sees this node draining.
                continue;
            }
            let epoch = p.map_or(1, |p| p.epoch) + 1;
            let target = {
                let m = self.members.borrow();
                p.and_then(|p| p.backup)
                    .filter(|b| m.usable(*b))
                    .or_else(|| m.choose_backup(&[self.me]))
            };
            let Some(target) = target else {
                failed += 1;
                continue;
            };
            let copy = OwnedReplica {
                hash,
                version: item.version,
                epoch,
                lifetime_s: item.lifetime_s,
                data: item.data,
            };
            if let Err(e) = self.replicate(target, copy.as_wire()).await {
                let why = match e {
                    ReplError::Fenced => "fenced".to_string(),
                    ReplError::Unreachable(s) => s,
                };
                warn!("cluster: drain: copy to {target} failed: {why}");
                failed += 1;
                continue;
            }
            match self
                .call(target, RelayMessage::Promote { hash, epoch }, 0)
                .await
            {
                Ok(Incoming::Ack) => {
                    moved += 1;
                    Counters::bump(&self.shared().counters.sessions_handed_off);
                    // Not awaited here: the hand-offs' records are grouped by the writer, each
                    // session's requests wait for its own (`settled`), and the drain reports
                    // done only once the last one is durable.
                    let c = self.set_placement(
                        hash,
                        Placement {
                            epoch,
                            master: Some(target),
                            backup: None,
                            prev: Some(self.me),
                        },
                    );
                    last = Commit(last.0.max(c.0));
                }
                other => {
                    warn!("cluster: drain: {target} did not take over: {other:?}");
                    failed += 1;
                }
            }
        }
        self.committed(last).await;
        // Give the masters this node backs up time to see the draining flag and move their
        // copies elsewhere (they act on the next heartbeat).
        let interval = self.node.settings.cluster.heartbeat_interval_ms;
        monoio::time::sleep(Duration::from_millis(interval * 2 + self.timeout_ms)).await;
        let text = format!("{moved} sessions handed off, {failed} could not be");
        if failed > 0 {
            error!("cluster: drain: {text}");
        } else {
            info!("cluster: drain: {text}");
        }
        let _ = done.send(text);
    }
}
