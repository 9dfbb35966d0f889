//! Rejoin: after a start, a healed partition or a RejoinNeeded, no session is served until this
//! node has synced with every live peer (the copies naming it, then the hash list of every
//! session it holds); and the peer's side of those syncs.

use super::*;

impl State {
    /// A rejoining node asks what it should know: the copies this node backs up for it (it is
    /// their master: stream `Replicas`), then the sessions this node masters that name it as
    /// backup or were taken over from it (stream `Masters`).
    pub(super) async fn on_sync_request(
        self: &Rc<Self>,
        conn: &Rc<ServedConn>,
        rid: u64,
        sender: Option<SocketAddr>,
    ) {
        let Some(peer) = sender else {
            let _ = conn.relay.send((
                rid,
                Out::Error {
                    code: ErrorCode::Unavailable,
                    message: "no heartbeat from you yet".into(),
                },
            ));
            return;
        };
        // What it is told is durable here first (no placement a crash could take back); done
        // before its leases are cleared, so that no wait comes between the clearing and the
        // streams (the clearing itself is not awaited: lost in a crash, it only denies again).
        self.settled_all().await;
        // Its rejoin: the streams below tell it every session taken over from it until now, so
        // it may have leases again (a takeover after this denies them anew).
        if self.leases_synced(peer) {
            info!("cluster: {peer} syncs (rejoins): it is granted read leases again");
        }
        let all: Vec<([u8; 16], Placement)> = self
            .placements
            .borrow()
            .iter()
            .map(|(h, p)| (*h, *p))
            .collect();
        for role in [SyncRole::Replicas, SyncRole::Masters] {
            let list: Vec<([u8; 16], Placement)> = all
                .iter()
                .filter(|(_, p)| match role {
                    SyncRole::Replicas => p.backup == Some(self.me) && p.master == Some(peer),
                    SyncRole::Masters => {
                        p.master == Some(self.me)
                            && (p.backup == Some(peer) || p.prev == Some(peer))
                    }
                })
                .copied()
                .collect();
            let _ = conn.relay.send((
                rid,
                Out::SyncBegin {
                    role,
                    count: list.len() as u64,
                },
            ));
            let mut sent = 0;
            for (hash, p) in list {
                if let Some(copy) = self.copy_of(hash, p.epoch).await {
                    sent += 1;
                    let _ = conn.relay.send((rid, Out::SyncItem(copy)));
                }
            }
            let _ = conn.relay.send((rid, Out::SyncEnd { count: sent }));
        }
    }

    /// A rejoining node lists sessions it holds copies of: for each one this node knows, where
    /// it lives (its placement here, with the data version of the copy held here), or, for a
    /// copy without a placement, epoch 0 with this node as "master" (it only says a copy is
    /// here: `wire.md`, SyncPlaces).
    pub(super) async fn on_sync_hashes(self: &Rc<Self>, hashes: Vec<[u8; 16]>) -> Out {
        // The versions of the copies held here, from every core at once (no data copied).
        let held = self.versions(&hashes).await;
        let mut bytes = Vec::new();
        for hash in hashes {
            let copy = held.get(&hash).copied();
            let location = match self.placement(&hash) {
                Some(Placement {
                    master: Some(master),
                    backup,
                    epoch,
                    ..
                }) => Location {
                    master,
                    backup,
                    epoch,
                    version: copy.unwrap_or(0),
                },
                _ => match copy {
                    Some(version) => Location {
                        master: self.me,
                        backup: None,
                        epoch: 0,
                        version,
                    },
                    None => continue,
                },
            };
            PlaceList::push(&mut bytes, &hash, &location);
        }
        Out::SyncPlaces(bytes)
    }

    // ----- rejoin and drain ------------------------------------------------------------------

    /// Stops serving and rejoins (a peer sent RejoinNeeded, or this node hears a peer again after
    /// losing sight of every peer). One rejoin at a time: during one, the request adds a sync
    /// round instead.
    pub(super) fn request_rejoin(self: &Rc<Self>, why: String) {
        if self.rejoining.get() {
            self.rejoin_again.set(true);
            info!("cluster: {why}; already rejoining: one more sync round before serving");
            return;
        }
        self.rejoining.set(true);
        self.rejoin_gen.set(self.rejoin_gen.get() + 1);
        self.ready.set(false);
        let counters = &self.shared().counters;
        // The cores stop serving on their own (`serve_directly`) and send every request here,
        // where `handle` waits for the rejoin to end.
        counters.ready.store(0, Ordering::Relaxed);
        Counters::bump(&counters.rejoins);
        warn!(
            "cluster: rejoining: {why}; no session is served until this node has synced with \
             every live node"
        );
        monoio::spawn(self.clone().rejoin(false));
    }

    /// Tells `to`, which this node had declared down and hears again, to rejoin (in the
    /// background; retried while it stays up).
    pub(super) fn send_rejoin_needed(self: &Rc<Self>, to: SocketAddr) {
        Counters::bump(&self.shared().counters.rejoins_requested);
        let me = self.clone();
        monoio::spawn(async move {
            for attempt in 1..=5 {
                match me.call(to, RelayMessage::RejoinNeeded, 0).await {
                    Ok(Incoming::Ack) => {
                        info!(
                            "cluster: told {to} to rejoin (it was declared down and is heard again)"
                        );
                        return;
                    }
                    other => {
                        let why = match other {
                            Ok(answer) => format!("it answered {answer:?}"),
                            Err(e) => e.to_string(),
                        };
                        warn!("cluster: could not tell {to} to rejoin (attempt {attempt}): {why}");
                        if me.members.borrow().known_down(to) {
                            return;
                        }
                        monoio::time::sleep(Duration::from_millis(cluster_retry_ms(&me))).await;
                    }
                }
            }
        });
    }

    /// Ask every live peer what it holds for this node, then serve. After a start
    /// (`after_start`), first hear the others (up to the node timeout). While it runs, `ready`
    /// is false; a rejoin requested meanwhile adds one more round.
    pub(super) async fn rejoin(self: Rc<Self>, after_start: bool) {
        let cluster = self.node.resolved.cluster.clone().expect("clustering on");
        if after_start {
            let start = clock_ms();
            let wait_until = start + cluster.node_timeout_ms;
            let expected = cluster
                .peers
                .iter()
                .filter(|p| p.ip() != self.me.ip())
                .count();
            while clock_ms() < wait_until {
                if expected > 0 && self.members.borrow().up_count() >= expected {
                    break;
                }
                monoio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let mut items = 0u64;
        let mut rounds = 0u32;
        loop {
            self.rejoin_again.set(false);
            self.round_started_ms.set(membership::now_ms());
            rounds += 1;
            let live = self.members.borrow().live();
            for peer in live {
                for attempt in 0..5 {
                    match self.sync_from(peer).await {
                        Ok(n) => {
                            items += n;
                            break;
                        }
                        Err(e) => {
                            warn!(
                                "cluster: sync from {} failed (attempt {}): {e}",
                                peer,
                                attempt + 1
                            );
                            if self.members.borrow().known_down(peer) {
                                break;
                            }
                            monoio::time::sleep(Duration::from_millis(cluster_retry_ms(&self)))
                                .await;
                        }
                    }
                }
            }
            // Then where every session this node holds a copy of lives now (a takeover that
            // the streams above cannot tell: one that moved on since, or whose new master
            // restarted since).
            self.sync_hashes().await;
            // Each extra round needs a new event (a RejoinNeeded, a peer heard again after it
            // was declared down), so this ends.
            if !self.rejoin_again.get() {
                break;
            }
            info!("cluster: rejoin: asked again or a peer returned meanwhile: syncing once more");
        }
        // No await between the last check and here: a request arriving now starts a new rejoin.
        self.rejoining.set(false);
        self.ready.set(true);
        self.shared().counters.ready.store(1, Ordering::Relaxed);
        info!(
            "cluster: ready: {} live peers, {items} sessions refreshed from them ({rounds} sync \
             rounds)",
            self.members.borrow().up_count()
        );
        self.add_missing_backups();
    }

    /// The rejoin's hash list (scd-cluster's SyncRequest hashes): lists the HASH of every
    /// session in this node's shards to every live peer (SyncHashes, in chunks), and for each
    /// session the newest placement any of them knows (highest epoch, then data version)
    /// decides: this node masters it (adopted with its epoch and backup), backs it up (kept as
    /// a replica), or neither — then requests for it are routed to its master, and the local
    /// copy, older than the master's, is dropped so that it is never served again. A session
    /// no peer knows is served by its ID, as before. A peer that does not answer a chunk is
    /// asked again (as `sync_from`), then left out.
    pub(super) async fn sync_hashes(self: &Rc<Self>) {
        let hashes: Vec<[u8; 16]> = self
            .ask_cores(CoreMsg::Hashes)
            .await
            .into_iter()
            .flatten()
            .collect();
        if hashes.is_empty() {
            return;
        }
        // The answer to a chunk must fit the body limit too (68 bytes an entry).
        let fit = (self.limits.body_max as usize).saturating_sub(4) / PlaceList::ENTRY_LEN;
        let chunk = fit.clamp(1, SYNC_HASHES_MAX);
        let peers = self.members.borrow().live();
        let listed: HashSet<[u8; 16]> = hashes.iter().copied().collect();
        let mut best: HashMap<[u8; 16], (Location, bool)> = HashMap::new();
        let mut silent = 0u32;
        for peer in peers {
            for part in hashes.chunks(chunk) {
                let mut bytes = Vec::with_capacity(part.len() * 16);
                for h in part {
                    bytes.extend_from_slice(h);
                }
                let Ok(list) = HashList::new(&bytes) else {
                    continue;
                };
                Counters::bump_by(&self.shared().counters.rejoin_hashes_listed, part.len());
                let mut answered = false;
                for attempt in 0..5 {
                    // Up to 10 relay timeouts for the answer (a sync stream's stall limit):
                    // the peer looks up every listed session.
                    let wait = self.timeout_ms * 9;
                    match self
                        .call(peer, RelayMessage::SyncHashes { hashes: list }, wait)
                        .await
                    {
                        Ok(Incoming::SyncPlaces(entries)) => {
                            for (hash, l) in entries {
                                // Epoch 0: a copy without a placement, which decides nothing.
                                if l.epoch == 0 || !listed.contains(&hash) {
                                    continue;
                                }
                                merge_place(&mut best, hash, l);
                            }
                            answered = true;
                            break;
                        }
                        other => {
                            warn!(
                                "cluster: rejoin: {peer} did not answer the session list \
                                 (attempt {}): {other:?}",
                                attempt + 1
                            );
                            if self.members.borrow().known_down(peer) {
                                break;
                            }
                            monoio::time::sleep(Duration::from_millis(cluster_retry_ms(self)))
                                .await;
                        }
                    }
                }
                if !answered {
                    silent += 1;
                    break;
                }
            }
        }
        let (mut adopted, mut kept, mut moved, mut split) = (0u64, 0u64, 0u64, 0u64);
        // Every placement learnt here is journaled as one batch, durable (one fdatasync)
        // before any local copy is dropped or anything is served (staged with no await until
        // it is submitted).
        let mut elsewhere = Vec::new();
        for (hash, (l, conflict)) in best {
            if conflict {
                // Two masters at the newest epoch (both sides of a partition changed the
                // placement): the sync streams' tie rule and fencing at the next write decide,
                // not this list (two nodes rejoining at once could each defer to the other).
                split += 1;
                continue;
            }
            match self.apply_known_place(hash, l) {
                Some(Known::Master) => adopted += 1,
                Some(Known::Backup) => kept += 1,
                Some(Known::Elsewhere) => {
                    moved += 1;
                    elsewhere.push((hash, l));
                }
                None => {}
            }
        }
        let c = self.journal_submit();
        self.committed(c).await;
        // Taken over by another node that does not name this one: the local copy is dropped
        // (never served again, also once the placement is swept).
        for (hash, l) in elsewhere {
            let _ = self.local(hash, self.next_owner(), Op::Remove).await;
            Counters::bump(&self.shared().counters.rejoin_moved);
            info!(
                "cluster: rejoin: a session held here was taken over by {} (epoch {}): \
                 requests go there, the local copy is dropped",
                l.master, l.epoch
            );
        }
        info!(
            "cluster: rejoin: {} sessions listed to peers: {adopted} mastered here, {kept} \
             backed up here, {moved} taken over elsewhere (copies dropped), {split} with two \
             masters at one epoch left as they were{}",
            hashes.len(),
            if silent > 0 {
                format!("; {silent} peers did not answer")
            } else {
                String::new()
            }
        );
    }

    /// Applies the newest placement the peers know of a session this node holds a copy of
    /// (`sync_hashes`); None: what this node knows is as new or newer. (`Elsewhere`: the caller
    /// drops the local copy.) The journal record is staged only: the caller submits the group.
    pub(super) fn apply_known_place(self: &Rc<Self>, hash: [u8; 16], l: Location) -> Option<Known> {
        let known = self.placement(&hash);
        // Only a newer epoch than this node knows decides: at the same epoch, what the sync
        // streams set (with their tie rule) stands.
        if let Some(q) = known.filter(|q| q.epoch >= l.epoch) {
            // The streams do not carry the backup: take it from the list.
            if q.epoch == l.epoch && q.master == Some(l.master) && q.backup.is_none() {
                let _ = self.stage_placement(
                    hash,
                    Placement {
                        backup: l.backup,
                        ..q
                    },
                );
            }
            return None;
        }
        if l.master == self.me {
            let _ = self.stage_placement(
                hash,
                Placement {
                    epoch: l.epoch,
                    master: Some(self.me),
                    backup: l.backup,
                    prev: known.and_then(|q| q.prev),
                },
            );
            return Some(Known::Master);
        }
        if l.backup == Some(self.me) {
            let _ = self.stage_placement(
                hash,
                Placement {
                    epoch: l.epoch,
                    master: Some(l.master),
                    backup: Some(self.me),
                    prev: None,
                },
            );
            return Some(Known::Backup);
        }
        // Taken over by another node that does not name this one: route there (the caller
        // drops the local copy).
        let _ = self.stage_placement(
            hash,
            Placement {
                epoch: l.epoch,
                master: Some(l.master),
                backup: l.backup,
                prev: None,
            },
        );
        Some(Known::Elsewhere)
    }

    pub(super) async fn sync_from(self: &Rc<Self>, peer: SocketAddr) -> Result<u64, String> {
        let c = self.conn(peer).await.map_err(|e| e.to_string())?;
        let (id, rx) = c
            .send(RelayMessage::SyncRequest {
                role: SyncRole::Replicas,
            })
            .map_err(|e| e.to_string())?;
        let limit = Duration::from_millis(self.timeout_ms * 10);
        let mut role = SyncRole::Replicas;
        let mut ends = 0;
        let mut n = 0;
        // Each item's placement is submitted as it comes (the writer groups them); the last
        // batch is awaited before the stream's result counts.
        let mut last = Commit(0);
        let result = loop {
            let m = match monoio::time::timeout(limit, rx.recv_async()).await {
                Ok(Ok(m)) => m,
                Ok(Err(_)) => break Err("connection lost".to_string()),
                Err(_) => break Err("sync stalled".to_string()),
            };
            match m {
                Incoming::SyncBegin(r) => role = r,
                Incoming::SyncItem(item) => {
                    n += 1;
                    Counters::bump(&self.shared().counters.sync_items);
                    self.apply_sync_item(peer, role, item).await;
                    let c = self.submit_for(&[]);
                    if c.0 != 0 {
                        last = c;
                    }
                }
                Incoming::SyncEnd => {
                    ends += 1;
                    if ends == 2 {
                        break Ok(n);
                    }
                }
                Incoming::Error { message, .. } => break Err(message),
                other => break Err(format!("unexpected {other:?}")),
            }
        };
        c.forget(id);
        self.committed(last).await;
        result
    }

    pub(super) async fn apply_sync_item(
        self: &Rc<Self>,
        peer: SocketAddr,
        role: SyncRole,
        item: OwnedReplica,
    ) {
        let hash = item.hash;
        let epoch = item.epoch;
        let _ = self
            .local(
                hash,
                self.next_owner(),
                Op::ApplyReplica {
                    version: item.version,
                    lifetime_s: item.lifetime_s,
                    data: item.data,
                    durable: false,
                },
            )
            .await;
        let p = match role {
            // The peer backs this node's session up: this node is (still) its master.
            SyncRole::Replicas => Placement {
                epoch,
                master: Some(self.me),
                backup: Some(peer),
                prev: None,
            },
            // The peer masters it now: this node holds a copy (its backup, or a stale former
            // master that must not serve it) and routes requests there.
            SyncRole::Masters => Placement {
                epoch,
                master: Some(peer),
                backup: None,
                prev: None,
            },
        };
        let known = self.placement(&hash);
        // What this node knows at the same epoch with the same master is kept as it is: the
        // stream does not carry the backup, nor the node the session was taken over from
        // (`prev`), which this node must go on telling that node when it rejoins in turn.
        let same = known.is_some_and(|q| q.epoch == epoch && q.master == p.master);
        // A tie between "this node is the master" (a copy a peer backs up for it) and another
        // node mastering it at the same epoch (both changed the placement during a partition)
        // goes to the other node: this node steps back, whatever order the streams came in.
        let tie_lost = role == SyncRole::Replicas
            && known.is_some_and(|q| {
                q.epoch == epoch && q.master.is_some() && q.master != Some(self.me)
            });
        let newer = known.is_none_or(|q| q.epoch <= epoch);
        if newer && !same && !tie_lost {
            // Staged: `sync_from` submits it.
            let _ = self.stage_placement(hash, p);
        }
    }
}
