//! Failover: a backup taking a session over (promotion, with the witness rule and the read-lease
//! rule), the master's read leases (asking, denial, waiting for one before serving), the
//! witness requests a decider sends and answers, and the Promote of a drain.

use super::*;

impl State {
    /// The master cannot be reached and this node is the session's backup: take it over.
    pub(super) async fn promote_and_serve(
        self: &Rc<Self>,
        id: SessionId,
        op: Op<Vec<u8>>,
        owner: OwnerId,
        reply: ReplyTo,
        forwarded: bool,
    ) {
        let hash = id.hash;
        let known = self.placement(&hash).map_or(0, |p| p.epoch);
        let epoch = id.version.max(known) + 1;
        // From now on the old master is denied read leases here until it has synced (rejoined):
        // it must not serve this session again. (Before the takeover's first await: a request
        // heard meanwhile must not be granted.) Staged: `take_over` submits it with the new
        // placement, in one batch, before its first await.
        self.stage_deny(
            id.master,
            format!(
                "{} took over a session from you (failover to epoch {epoch})",
                self.me
            ),
        );
        let p = self.take_over(hash, epoch, id.master).await;
        if p.master != Some(self.me) {
            return answer(
                reply,
                &unavailable("the session's placement changed while this node took it over; retry"),
                None,
            );
        }
        Counters::bump(&self.shared().counters.failovers);
        info!(
            "cluster: failover: took over a session from {} (epoch {epoch}, new backup {})",
            id.master,
            p.backup.map_or("none".to_string(), |b| b.to_string())
        );
        self.serve_master(p, id, op, owner, reply, forwarded).await
    }

    /// Becomes master of `hash` at `epoch`, with a new backup holding a copy.
    pub(super) async fn take_over(
        self: &Rc<Self>,
        hash: [u8; 16],
        epoch: u32,
        from: SocketAddr,
    ) -> Placement {
        let nb = self.members.borrow().choose_backup(&[self.me, from]);
        let mut p = Placement {
            epoch,
            master: Some(self.me),
            backup: None,
            prev: Some(from),
        };
        // With the denial `promote_and_serve` staged: durable before the copy goes out.
        let c = self.set_placement(hash, p);
        self.committed(c).await;
        let first = p;
        if let Some(nb) = nb {
            if !self.node.settings.cluster.ha {
                return p;
            }
            match self.copy_of(hash, epoch).await {
                Some(copy) => {
                    if self.replicate(nb, copy.as_wire()).await.is_ok() {
                        p.backup = Some(nb);
                    }
                }
                // Nothing to copy yet: the backup gets the first write.
                None => p.backup = Some(nb),
            }
            // What changed the placement during the copy (a rejoin that started, a newer copy
            // from another master) stands: the backup is recorded only over this takeover's own.
            match self.placement(&hash) {
                Some(now) if now == first => {
                    let c = self.set_placement(hash, p);
                    self.committed(c).await;
                }
                Some(now) => return now,
                None => return first,
            }
        }
        p
    }

    // ----- read leases ---------------------------------------------------------------------

    /// Asks `peer` for a read lease, in the background (at most one request in flight to each
    /// peer). A grant for the request sent at `t` (this node's monotonic clock) makes the lease
    /// valid until `t + lease_ms`; a denial ends it and makes this node rejoin.
    pub(super) fn request_lease(self: &Rc<Self>, peer: SocketAddr) {
        if !self.lease_inflight.borrow_mut().insert(peer) {
            return;
        }
        let me = self.clone();
        monoio::spawn(async move {
            let sent_ms = membership::now_ms();
            Counters::bump(&me.shared().counters.leases_requested);
            let r = me
                .call(peer, RelayMessage::LeaseRequest { sent_ms }, 0)
                .await;
            me.lease_inflight.borrow_mut().remove(&peer);
            let shared = me.shared();
            match r {
                Ok(Incoming::LeaseGrant(t)) if t == sent_ms => {
                    Counters::bump(&shared.counters.leases_granted);
                    shared.leases.grant(peer, sent_ms + me.lease_ms);
                }
                Ok(Incoming::LeaseDenied(t, reason)) if t == sent_ms => {
                    Counters::bump(&shared.counters.leases_denied);
                    shared.leases.revoke(peer);
                    me.lease_denied_by(peer, sent_ms, &reason);
                }
                Ok(other) => debug!("cluster: lease request to {peer} answered {other:?}"),
                Err(e) => debug!("cluster: lease request to {peer} failed: {e}"),
            }
        });
    }

    /// `peer` denied a lease requested at `sent_ms`: it took over a session from this node (or
    /// replaced it) since this node last synced with it. Rejoin (the sync tells this node what
    /// moved, and clears the denial there), unless the request left before the current rejoin
    /// round began: that round's sync answers it.
    pub(super) fn lease_denied_by(self: &Rc<Self>, peer: SocketAddr, sent_ms: u64, reason: &str) {
        if self.rejoining.get() && sent_ms < self.round_started_ms.get() {
            debug!("cluster: {peer} denied a lease requested before this rejoin round: {reason}");
            return;
        }
        self.request_rejoin(format!("{peer} denied this node a read lease ({reason})"));
    }

    /// The serving rule's lease half: this node serves a session it masters whose backup is B
    /// only while it holds a valid read lease from B (B then cannot have taken it over). With
    /// no valid lease, it asks B at once and waits for a grant, at most the relay timeout (half
    /// of it for a peer's relayed request, which must be answered within the peer's timeout); a
    /// backup known down, or refusing connections, is replaced first (`move_backup`), and the
    /// new backup's lease counts.
    /// Ok: the placement to serve under. Err: the Unavailable answer, naming the backup.
    pub(super) async fn await_lease(
        self: &Rc<Self>,
        hash: [u8; 16],
        p: Placement,
        forwarded: bool,
    ) -> Result<Placement, OwnedReply> {
        let shared = self.shared();
        match p.backup {
            None => return Ok(p),
            Some(b) if shared.leases.valid(b, membership::now_ms()) => return Ok(p),
            Some(_) => Counters::bump(&shared.counters.leases_missing),
        }
        let wait = if forwarded {
            self.timeout_ms / 2
        } else {
            self.timeout_ms
        };
        let deadline = membership::now_ms() + wait;
        let mut p = p;
        let mut replaced: Vec<SocketAddr> = Vec::new();
        loop {
            let Some(b) = p.backup else { return Ok(p) };
            if shared.leases.valid(b, membership::now_ms()) {
                return Ok(p);
            }
            let down = self.members.borrow().known_down(b);
            let refused = !replaced.contains(&b) && !down && self.refuses(b).await;
            if !replaced.contains(&b) && (down || refused) {
                // Down in this node's view (silent: a witness must agree), or its process is
                // gone (refused: no need to wait for the node timeout, nor for a witness): give
                // the session a new backup (which holds a copy and whose lease then counts), or
                // none if no other node can take it and `b` may be dropped.
                replaced.push(b);
                let checked = refused.then_some(BackupLoss::Refused);
                self.move_backup(hash, p, b, None, checked).await;
            } else if down || membership::now_ms() >= deadline {
                return Err(unavailable(format!(
                    "this node holds no valid read lease from the session's backup {b}{}, which \
                     may have taken the session over; retry",
                    if down {
                        " (down in this node's view, and it could not be replaced: no other \
                         node took its copy, or none witnessed that it is silent)"
                    } else {
                        ""
                    }
                )));
            } else {
                self.request_lease(b);
                monoio::time::sleep(Duration::from_millis(10)).await;
            }
            match self.placement(&hash) {
                Some(now) if now.master == Some(self.me) => p = now,
                Some(_) => {
                    return Err(unavailable(
                        "the session moved to another node while this one waited for a read \
                         lease; retry",
                    ));
                }
                None => {}
            }
        }
    }

    /// Whether `addr` refuses relay connections (nothing listens: its process is gone). A
    /// pooled connection that still works, a timeout or any other error is not a refusal.
    /// Always false with `cluster.failover_on_refused` off.
    pub(super) async fn refuses(self: &Rc<Self>, addr: SocketAddr) -> bool {
        if !self.node.settings.cluster.failover_on_refused {
            return false;
        }
        matches!(self.conn(addr).await, Err(CallError::Refused(_)))
    }

    /// Asks every live peer but `suspect` (in parallel, each answer awaited at most the relay
    /// timeout) to witness that `suspect` is silent, before a placement change made on that
    /// silence (`witness.rs`). Done once enough agreed that, with this node, they are a
    /// majority of the nodes it knows (draining ones left out), or once every answer is in.
    pub(super) async fn witness(
        self: &Rc<Self>,
        suspect: SocketAddr,
        change: WitnessChange,
        epoch: u32,
    ) -> Witnessed {
        let (asked, needed) = {
            let members = self.members.borrow();
            let table = members.table();
            let known = table
                .known()
                .into_iter()
                .filter(|&a| !table.is_draining(a))
                .count();
            let asked = witness::witnesses(&members.live(), suspect);
            (asked, witness::needed(known))
        };
        if asked.is_empty() {
            return Witnessed::Alone;
        }
        if asked.len() < needed {
            // Not enough live nodes to make a majority: asking would only deny the suspect
            // leases for nothing (a witness that agrees to a promote does).
            return Witnessed::NotAgreed {
                asked: asked.len(),
                agreed: 0,
                needed,
            };
        }
        let (tx, rx) = flume::unbounded();
        for &peer in &asked {
            let me = self.clone();
            let tx = tx.clone();
            monoio::spawn(async move {
                Counters::bump(&me.shared().counters.witness_requests);
                let message = RelayMessage::WitnessRequest {
                    suspect,
                    change,
                    epoch,
                };
                let r = me.call(peer, message, 0).await;
                let _ = tx.send((peer, r));
            });
        }
        drop(tx);
        let counters = &self.shared().counters;
        let mut agreed = 0;
        while let Ok((peer, r)) = rx.recv_async().await {
            match r {
                Ok(Incoming::Ack) => {
                    Counters::bump(&counters.witness_agreed);
                    info!("cluster: {peer} witnessed that {suspect} is silent ({change:?})");
                    agreed += 1;
                    if agreed >= needed {
                        return Witnessed::Agreed { agreed };
                    }
                }
                Ok(Incoming::Error {
                    code: ErrorCode::NotAgreed,
                    message,
                }) => {
                    Counters::bump(&counters.witness_refused);
                    info!("cluster: {peer} does not witness that {suspect} is silent: {message}");
                }
                Ok(other) => debug!("cluster: witness request to {peer} answered {other:?}"),
                Err(e) => debug!("cluster: witness request to {peer} failed: {e}"),
            }
        }
        Witnessed::NotAgreed {
            asked: asked.len(),
            agreed,
            needed,
        }
    }

    /// Whether this node may drop or replace `gone` as a session's backup (at `epoch`): without
    /// a witness when `gone` refuses connections (its process is gone) or announced that it is
    /// draining; otherwise (silence) only with another node's agreement, or alone with
    /// `cluster.allow_alone`. Err: why not.
    pub(super) async fn may_drop_backup(
        self: &Rc<Self>,
        gone: SocketAddr,
        epoch: u32,
    ) -> Result<BackupLoss, String> {
        if self.members.borrow().table().is_draining(gone) {
            return Ok(BackupLoss::Draining);
        }
        let w = self.witness(gone, WitnessChange::DropBackup, epoch).await;
        match witness::decide(w, self.node.settings.cluster.allow_alone) {
            Ok(()) => Ok(BackupLoss::Witnessed),
            // (Probed after the witnesses: a connection attempt to a silent host may take the
            // relay timeout.)
            Err(_) if self.refuses(gone).await => Ok(BackupLoss::Refused),
            Err(why) => Err(why),
        }
    }

    /// The promotion rule: this node, the session's backup, may take it over from `master` only
    /// when `master` is down in its own view (not heard for the node timeout, which also means
    /// that every lease it granted `master` has ended), or when its connection to `master` was
    /// just refused (`refused`, counted only with `cluster.failover_on_refused`). A relay
    /// timeout alone is not enough: the master may be alive behind a partition, and serving.
    pub(super) fn may_promote(&self, master: SocketAddr, refused: bool) -> bool {
        let m = self.members.borrow();
        let view = MasterView {
            up: m.table().is_up(master),
            known_down: m.known_down(master),
            // (`now_ms` counts from the cluster thread's start.)
            ran_node_timeout: membership::now_ms() >= m.table().config().node_timeout_ms,
            refused,
        };
        crate::cluster::lease::may_promote(view, self.node.settings.cluster.failover_on_refused)
    }

    /// A peer asks this node to witness that `suspect` is silent (`witness.rs`). The request
    /// itself counts as hearing the sender (done by the caller), never the suspect. With the
    /// answer, the journal commit to await before it is sent, if there is one.
    pub(super) fn on_witness_request(
        self: &Rc<Self>,
        suspect: SocketAddr,
        change: WitnessChange,
        epoch: u32,
        sender: Option<SocketAddr>,
    ) -> (Out, Option<Commit>) {
        let view = {
            let m = self.members.borrow();
            WitnessView {
                suspect_silent: !m.table().is_up(suspect)
                    && (m.known_down(suspect)
                        || membership::now_ms() >= m.table().config().node_timeout_ms),
                serving: self.ready.get() && !self.shared().draining.load(Ordering::Relaxed),
                requester: sender,
                suspect,
            }
        };
        let from = sender.map_or_else(|| "an unknown node".to_string(), |a| a.to_string());
        match witness::agree(view) {
            Ok(()) => {
                info!(
                    "cluster: witnessed for {from} that {suspect} is silent ({change:?} at epoch \
                     {epoch})"
                );
                let mut commit = None;
                if change == WitnessChange::Promote {
                    // Its session is taken over: it must rejoin (and learn so) before it has a
                    // lease from this node again.
                    commit = Some(self.deny_leases(
                        suspect,
                        format!(
                            "{} witnessed a takeover of a session from you (epoch {epoch})",
                            self.me
                        ),
                    ));
                }
                (Out::Ack, commit)
            }
            Err(why) => {
                info!(
                    "cluster: refused to witness for {from} that {suspect} is silent ({change:?}): \
                     {why}"
                );
                let out = Out::Error {
                    code: ErrorCode::NotAgreed,
                    message: why.to_string(),
                };
                (out, None)
            }
        }
    }

    pub(super) async fn on_promote(
        self: &Rc<Self>,
        hash: [u8; 16],
        epoch: u32,
        sender: Option<SocketAddr>,
    ) -> Out {
        self.settled(&hash).await;
        if let Some(p) = self.placement(&hash) {
            if p.epoch > epoch {
                return Out::Error {
                    code: ErrorCode::StaleEpoch,
                    message: format!("epoch {} is known here (got {epoch})", p.epoch),
                };
            }
        }
        let from = sender.unwrap_or(self.me);
        let p = self.take_over(hash, epoch, from).await;
        if p.master != Some(self.me) {
            // The placement changed during the takeover (a rejoin, a newer copy): not taken.
            return Out::Error {
                code: ErrorCode::Unavailable,
                message: "the session's placement changed while this node took it over".into(),
            };
        }
        info!(
            "cluster: took over a session handed off by {from} (epoch {epoch}, backup {})",
            p.backup.map_or("none".to_string(), |b| b.to_string())
        );
        Out::Ack
    }
}
