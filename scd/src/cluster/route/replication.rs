//! Replication: a written session's copy to its backup (under write-through before the client's
//! answer, under delayed-write through the backup's bounded queue, sent in batches), the repair
//! of a copy that failed, fencing of a stale master, and the backup's side: applying single
//! copies and batches, recording each copy's placement before it reaches the shard.

use super::*;

impl State {
    /// Runs a write (WriteUnlock or WriteHold, Touch) on the local shard and gets its copy to
    /// the backup; returns the client's answer, and whether the shard applied the write (a
    /// WriteHold's lock is then the caller's to release). When the shard applied the write and
    /// waits for its flush (write-through), it tells the version at once and the copy goes to
    /// the backup while the flush runs: the answer is a success only once both the write is
    /// durable here and the backup acknowledged the copy (a refused copy, or a failed flush, is
    /// the client's error). Under write-through a WriteUnlock is sent as WriteHold, so the lock
    /// is held until then and the copies of one session's writes leave one after the other. A
    /// write answered at once (delayed-write, or refused) is copied after its answer, as before.
    pub(super) async fn write_replicated(
        self: &Rc<Self>,
        p: Placement,
        hash: [u8; 16],
        owner: OwnerId,
        op: Op<Vec<u8>>,
        source: CopySource,
    ) -> (OwnedReply, bool) {
        let (tx, rx) = flume::bounded(1);
        let (applied_tx, applied_rx) = flume::bounded(1);
        self.local_to(hash, owner, op, ReplyTo::with_applied(tx, 0, applied_tx))
            .await;
        if let Ok(version) = applied_rx.recv_async().await {
            let (r, copied) = monoio::join!(
                self.local_answer(rx),
                self.copy_out(p, hash, version, source)
            );
            let r = match (r, copied) {
                (OwnedReply::Done { .. }, Err(e)) => e,
                (r, _) => r,
            };
            return (r, true);
        }
        let r = self.local_answer(rx).await;
        if let OwnedReply::Done { version } = r {
            if let Err(e) = self.copy_out(p, hash, version, source).await {
                return (e, true);
            }
            return (r, true);
        }
        (r, false)
    }

    /// The copy of a WriteUnlock a core served itself (`ClusterMsg::Copied`): to the backup, as
    /// `write_replicated` sends it. `done` gets None, or why the client gets `Unavailable`.
    pub(super) async fn copied(
        self: Rc<Self>,
        id: SessionId,
        version: u64,
        lifetime_s: u32,
        data: Vec<u8>,
        done: Option<flume::Sender<Option<String>>>,
    ) {
        let hash = id.hash;
        self.settled(&hash).await;
        let p = match self.placement(&hash) {
            Some(p) => {
                self.keep(hash, lifetime_s);
                p
            }
            None => {
                // (The cores served the write only because the ID names this node master.)
                let p = Placement::named_by(&id);
                let c = self.set_placement(hash, p);
                self.committed(c).await;
                p
            }
        };
        let r = if p.master != Some(self.me) {
            // Taken over between the core's check and its write.
            Err(unavailable(
                "the session was taken over by another node; the write was not applied there; retry",
            ))
        } else {
            let copy = OwnedReplica {
                hash,
                version,
                epoch: p.epoch,
                lifetime_s,
                data,
            };
            self.replicate_write(p, copy).await
        };
        if let Some(done) = done {
            let err = r.err().map(|e| match e {
                OwnedReply::Error { message, .. } => message,
                other => format!("{other:?}"),
            });
            let _ = done.send(err);
        }
    }

    /// Moves the delayed-write copies the cores handed over (`ClusterShared::dw_copies`) into
    /// the backups' queues.
    pub(super) async fn take_core_copies(self: &Rc<Self>) {
        let copies = self.shared().take_dw_copies();
        self.copies_moving.set(self.copies_moving.get() + 1);
        for c in copies {
            self.clone()
                .copied(c.id, c.version, c.lifetime_s, c.data, None)
                .await;
        }
        self.copies_moving.set(self.copies_moving.get() - 1);
    }

    /// Builds the copy of a written session (from the write's data, or read back after a
    /// Touch) and gets it to the backup (see `replicate_write`).
    pub(super) async fn copy_out(
        self: &Rc<Self>,
        p: Placement,
        hash: [u8; 16],
        version: u64,
        source: CopySource,
    ) -> Result<(), OwnedReply> {
        let copy = match source {
            CopySource::Data { lifetime_s, data } => OwnedReplica {
                hash,
                version,
                epoch: p.epoch,
                lifetime_s,
                data,
            },
            CopySource::Peek => match self.copy_of(hash, p.epoch).await {
                Some(copy) => copy,
                None => return Ok(()),
            },
        };
        self.replicate_write(p, copy).await
    }

    /// Gets a written copy to the backup: under write-through before returning, under
    /// delayed-write through the bounded queue. Returns the error to answer the client with when
    /// this node turned out not to be the master any more.
    pub(super) async fn replicate_write(
        self: &Rc<Self>,
        p: Placement,
        copy: OwnedReplica,
    ) -> Result<(), OwnedReply> {
        let Some(backup) = p.backup else {
            return Ok(());
        };
        if self.write_through() {
            return self.replicate_or_repair(p, backup, copy).await;
        }
        let q = self.dw_queue(backup);
        self.dw_enqueue(&q, copy.hash, DwChange::Copy(p, copy))
            .await;
        Ok(())
    }

    pub(super) fn write_through(&self) -> bool {
        matches!(
            self.node.settings.storage.model,
            crate::settings::StorageModel::WriteThrough
        )
    }

    /// The delayed-write queue of `backup` (made, with its sender task, on first use).
    pub(super) fn dw_queue(self: &Rc<Self>, backup: SocketAddr) -> Rc<DwQueue> {
        if let Some(q) = self.queued.borrow().get(&backup) {
            return q.clone();
        }
        let max = self.node.settings.cluster.replication_queue_max as usize;
        let q = Rc::new(DwQueue {
            backup,
            waiting: RefCell::new(HashMap::new()),
            order: RefCell::new(VecDeque::new()),
            slots: flume::bounded(max.max(1)),
            wake: Notify::default(),
        });
        self.queued.borrow_mut().insert(backup, q.clone());
        monoio::spawn(self.clone().dw_sender(q.clone()));
        q
    }

    /// Puts a session's change in the queue: folded into the session's waiting entry when there
    /// is one, else in a new entry once a slot is free (a full queue makes the write wait, in
    /// arrival order; nothing is dropped).
    pub(super) async fn dw_enqueue(&self, q: &DwQueue, hash: [u8; 16], change: DwChange) {
        let coalesced = &self.shared().counters.replications_coalesced;
        let Some(change) = q.merge(hash, change, coalesced) else {
            return;
        };
        // (Cannot fail: the queue holds the receiver.)
        let _ = q.slots.0.send_async(()).await;
        match q.merge(hash, change, coalesced) {
            // Another write of the session queued it while this one waited.
            None => {
                let _ = q.slots.1.try_recv();
            }
            Some(change) => q.insert(hash, change),
        }
    }

    /// Sends one backup's queued changes: waits for some, lets more gather for
    /// `DW_LINGER_MS` (at most the flush interval), sends them as one batch (sealed into one
    /// buffer: one write), and takes the next batch only once every answer of this one is in.
    pub(super) async fn dw_sender(self: Rc<Self>, q: Rc<DwQueue>) {
        let linger = DW_LINGER_MS.min(self.node.settings.storage.flush_interval_ms);
        loop {
            while q.order.borrow().is_empty() {
                q.wake.notified().await;
            }
            if q.order.borrow().len() < DW_BATCH_MAX {
                monoio::time::sleep(Duration::from_millis(linger)).await;
            }
            let batch = q.take_batch();
            if !batch.is_empty() {
                self.dw_send_batch(&q, batch).await;
            }
        }
    }

    pub(super) async fn dw_send_batch(
        self: &Rc<Self>,
        q: &Rc<DwQueue>,
        batch: Vec<([u8; 16], Item, bool)>,
    ) {
        let backup = q.backup;
        let conn = self.conn(backup).await;
        let counters = &self.shared().counters;
        // Copies go as ReplicateBatch frames (as few as the limits allow), Destroys as single
        // DropReplica frames; a session is in a batch at most once, so their order does not
        // matter. Everything is sealed into the connection's buffer before its writer runs: one
        // write.
        let mut copies: Vec<([u8; 16], Placement, OwnedReplica, bool)> = Vec::new();
        let mut drops = Vec::new();
        for (hash, item, frees) in batch {
            match item {
                Item::Copy(p, copy) => copies.push((hash, p, copy, frees)),
                Item::Drop(waiters) => drops.push((hash, waiters, frees)),
            }
        }
        let send = |message: RelayMessage<'_>| match &conn {
            Ok(c) => c.send(message).ok().map(|(id, rx)| (c.clone(), id, rx)),
            Err(_) => None,
        };
        let mut sent_drops = Vec::with_capacity(drops.len());
        for (hash, waiters, frees) in drops {
            let call = send(RelayMessage::DropReplica { hash });
            sent_drops.push((waiters, frees, call));
        }
        let mut frames = Vec::new();
        for group in batch_groups(&copies, &self.limits) {
            let entries = &copies[group.clone()];
            let call = if let [(_, _, copy, _)] = entries {
                if 4 + copy.as_wire().encoded_len() > self.limits.batch_body_max as usize {
                    // Larger than a batch may be: not with this node's own limits (a batch
                    // holds one largest session), but never refuse a copy for its framing; it
                    // goes alone, as before batches.
                    send(RelayMessage::Replicate(copy.as_wire()))
                } else {
                    self.send_batch(&send, entries)
                }
            } else {
                self.send_batch(&send, entries)
            };
            frames.push((group, call));
        }
        let deadline = std::time::Instant::now() + Duration::from_millis(self.timeout_ms);
        let answer_of = |call: Option<(Rc<PeerConn>, u64, flume::Receiver<Incoming>)>| async move {
            let (c, id, rx) = call?;
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let r = monoio::time::timeout(left, rx.recv_async()).await;
            c.forget(id);
            match r {
                Ok(Ok(m)) => Some(m),
                _ => None,
            }
        };
        // One answer per copy, whichever frame carried it.
        let mut answers: Vec<CopyAnswer> = Vec::with_capacity(copies.len());
        for (group, call) in frames {
            let answer = answer_of(call).await;
            let hashes = copies[group].iter().map(|(hash, ..)| *hash);
            answers.extend(copy_answers(hashes, answer));
        }
        for ((hash, p, copy, frees), answer) in copies.into_iter().zip(answers) {
            match answer {
                CopyAnswer::Held => {
                    Counters::bump(&counters.replications);
                    if frees {
                        let _ = q.slots.1.try_recv();
                    }
                }
                CopyAnswer::Stale => {
                    Counters::bump(&counters.replication_failures);
                    self.fenced(hash, p, backup).await;
                    if frees {
                        let _ = q.slots.1.try_recv();
                    }
                }
                CopyAnswer::Failed(why) => {
                    // Unreachable, or an unexpected answer: retried, then a new backup (in the
                    // background, as many at once as failed; each keeps its slot until done).
                    Counters::bump(&counters.replication_failures);
                    debug!("cluster: queued copy to {backup} failed: {why}");
                    let me = self.clone();
                    let q = q.clone();
                    monoio::spawn(async move {
                        let _ = me.replicate_or_repair(p, backup, copy).await;
                        if frees {
                            let _ = q.slots.1.try_recv();
                        }
                    });
                }
            }
        }
        for (waiters, frees, call) in sent_drops {
            let answer = answer_of(call).await;
            if !matches!(answer, Some(Incoming::Ack)) {
                debug!("cluster: backup {backup} did not drop a destroyed session: {answer:?}");
            }
            for w in waiters {
                let _ = w.send(());
            }
            if frees {
                let _ = q.slots.1.try_recv();
            }
        }
    }

    /// Seals one ReplicateBatch of `entries` (which `batch_groups` sized to the limits).
    pub(super) fn send_batch(
        &self,
        send: &impl Fn(RelayMessage<'_>) -> Option<(Rc<PeerConn>, u64, flume::Receiver<Incoming>)>,
        entries: &[([u8; 16], Placement, OwnedReplica, bool)],
    ) -> Option<(Rc<PeerConn>, u64, flume::Receiver<Incoming>)> {
        let mut bytes = Vec::with_capacity(
            entries
                .iter()
                .map(|(_, _, c, _)| c.as_wire().encoded_len())
                .sum(),
        );
        for (_, _, copy, _) in entries {
            ReplicaList::push(&mut bytes, &copy.as_wire());
        }
        let copies = match ReplicaList::new(&bytes, entries.len(), &self.limits) {
            Ok(copies) => copies,
            Err(e) => {
                // The entries come from this node's shards, within its limits: a bug.
                error!("cluster: cannot build a batch of copies: {e}");
                return None;
            }
        };
        Counters::bump(&self.shared().counters.replicate_batches);
        send(RelayMessage::ReplicateBatch { copies })
    }

    pub(super) async fn replicate_or_repair(
        self: &Rc<Self>,
        p: Placement,
        backup: SocketAddr,
        copy: OwnedReplica,
    ) -> Result<(), OwnedReply> {
        let hash = copy.hash;
        match self.replicate(backup, copy.as_wire()).await {
            Ok(()) => Ok(()),
            Err(ReplError::Fenced) => {
                self.fenced(hash, p, backup).await;
                Err(unavailable(
                    "the session was taken over by another node; the write was not applied there; retry",
                ))
            }
            Err(ReplError::Unreachable(e)) => {
                warn!("cluster: backup {backup} unreachable ({e}); choosing a new one");
                // The placement may have moved on meanwhile (another write repaired it).
                let now = self.placement(&hash).unwrap_or(p);
                if now.backup != Some(backup) {
                    if let Some(nb) = now.backup {
                        let copy = OwnedReplica {
                            epoch: now.epoch,
                            ..copy
                        };
                        return match self.replicate(nb, copy.as_wire()).await {
                            Ok(()) => Ok(()),
                            Err(_) => Ok(()),
                        };
                    }
                    return Ok(());
                }
                if self.move_backup(hash, now, backup, Some(copy), None).await {
                    Ok(())
                } else {
                    Err(unavailable(format!(
                        "the session's backup {backup} did not take the copy ({e}) and it could \
                         not be replaced (no other node took the copy, or none witnessed that it \
                         is silent): the write is applied here but not held by a backup; retry"
                    )))
                }
            }
        }
    }

    /// The backup refused a copy with a higher epoch: someone else is master now.
    pub(super) async fn fenced(self: &Rc<Self>, hash: [u8; 16], p: Placement, backup: SocketAddr) {
        if self.placement(&hash).is_some_and(|now| now != p) {
            // The refused copy was sent under a placement that has changed since (a queued
            // copy answered late): what is known now stands, and the copy here is kept.
            debug!("cluster: a copy sent under an older placement was refused by {backup}");
            return;
        }
        Counters::bump(&self.shared().counters.fenced);
        warn!(
            "cluster: fenced: backup {backup} holds a session under a newer epoch than {}; this \
             node stops serving it and drops its copy",
            p.epoch
        );
        let c = self.set_placement(
            hash,
            Placement {
                epoch: p.epoch + 1,
                master: Some(backup),
                backup: None,
                prev: Some(self.me),
            },
        );
        self.committed(c).await;
        let _ = self.local(hash, self.next_owner(), Op::Remove).await;
    }

    pub(super) async fn on_replicate(
        self: &Rc<Self>,
        copy: OwnedReplica,
        sender: Option<SocketAddr>,
    ) -> Out {
        let hash = copy.hash;
        self.settled(&hash).await;
        if let Some(message) = self.stale_copy(hash, copy.epoch, sender) {
            return Out::Error {
                code: ErrorCode::StaleEpoch,
                message,
            };
        }
        let lifetime_s = copy.lifetime_s;
        let arriving = self.copy_arriving(hash, copy.epoch, sender);
        // Its fdatasync runs while the shard applies the copy.
        let first = self.submit_for(&[hash]);
        let r = self
            .local(hash, self.next_owner(), Self::apply_op(copy))
            .await;
        let out = match self.copy_applied(hash, lifetime_s, arriving, r) {
            Ok(version) => Out::ReplicateAck { hash, version },
            Err((code, message)) => Out::Error { code, message },
        };
        let then = self.submit_for(&[hash]);
        self.committed(first).await;
        self.committed(then).await;
        out
    }

    /// Why a copy from `sender` at `epoch` must be refused (StaleEpoch), if it must: the rule of
    /// every copy a master sends (Replicate, and each entry of a ReplicateBatch).
    pub(super) fn stale_copy(
        &self,
        hash: [u8; 16],
        epoch: u32,
        sender: Option<SocketAddr>,
    ) -> Option<String> {
        let p = self.placement(&hash)?;
        // At the same epoch, only the master this node knows may send copies: two nodes that
        // changed the placement to the same epoch on either side of a partition (a takeover on
        // one side, a new backup on the other) must not both be taken for the master; the first
        // one heard keeps it.
        let other_master = sender.is_some() && p.master.is_some() && p.master != sender;
        if p.epoch > epoch || (p.epoch == epoch && (p.master == Some(self.me) || other_master)) {
            return Some(format!(
                "this node holds the session under epoch {} (got {epoch})",
                p.epoch
            ));
        }
        None
    }

    /// The shard operation that stores a master's copy (acknowledged once durable under
    /// write-through, see `Op::ApplyReplica`).
    pub(super) fn apply_op(copy: OwnedReplica) -> Op<Vec<u8>> {
        Op::ApplyReplica {
            version: copy.version,
            lifetime_s: copy.lifetime_s,
            data: copy.data,
            durable: true,
        }
    }

    /// A master's copy (not stale) is about to be applied: its placement is recorded now, before
    /// the copy reaches the shard, not once it is held. The apply waits for its flush, and
    /// meanwhile this node's rejoin may list the hash (it is in the shard) and learn an older
    /// placement from the master (one it had before this copy's epoch was committed there),
    /// which, with no placement known here, would drop the copy as taken over elsewhere while
    /// this node acknowledges it (the alone-then-backup test in `cluster_failover.rs`).
    pub(super) fn copy_arriving(
        &self,
        hash: [u8; 16],
        epoch: u32,
        sender: Option<SocketAddr>,
    ) -> Arriving {
        let before = self.placement(&hash);
        let tentative = Placement {
            epoch,
            master: sender,
            backup: Some(self.me),
            prev: None,
        };
        self.arrivals
            .borrow_mut()
            .entry(hash)
            .or_insert(Arrivals {
                in_flight: 0,
                before,
                held: false,
            })
            .in_flight += 1;
        // Staged: the caller submits it (with the others of a batch) and awaits the commit
        // before it acknowledges the copy.
        let _ = self.stage_placement(hash, tentative);
        Arriving { tentative }
    }

    /// Records a master's copy the shard answered `r` for: held (the version now held; the
    /// placement `copy_arriving` recorded stands, or a newer one learnt meanwhile), or why not
    /// (the placement known before stands again, unless a newer one came meanwhile).
    pub(super) fn copy_applied(
        &self,
        hash: [u8; 16],
        lifetime_s: u32,
        arriving: Arriving,
        r: OwnedReply,
    ) -> Result<u64, (ErrorCode, String)> {
        let done = matches!(r, OwnedReply::Done { .. });
        // The last of overlapping copies decides; one held is enough to keep the placement.
        let restore = {
            let mut all = self.arrivals.borrow_mut();
            match all.get_mut(&hash) {
                Some(a) => {
                    a.in_flight = a.in_flight.saturating_sub(1);
                    a.held |= done;
                    let last = *a;
                    if last.in_flight == 0 {
                        all.remove(&hash);
                        (!last.held).then_some(last.before)
                    } else {
                        None
                    }
                }
                None => None,
            }
        };
        if let OwnedReply::Done { version } = r {
            Counters::bump(&self.shared().counters.replicas_applied);
            self.keep(hash, lifetime_s);
            return Ok(version);
        }
        if let Some(before) = restore {
            if self.placement(&hash) == Some(arriving.tentative) {
                // Staged: the caller submits and awaits it before it answers.
                let _ = match before {
                    Some(b) => self.stage_placement(hash, b),
                    None => self.stage_forget(&hash),
                };
            }
        }
        match r {
            OwnedReply::Error { code, message } => Err((code, message)),
            other => Err((
                ErrorCode::Internal,
                format!("unexpected local answer {other:?}"),
            )),
        }
    }

    /// A ReplicateBatch: each copy under the rules of a single Replicate (`on_replicate`), a
    /// stale one refused alone; the others applied with one message to each core that owns some
    /// of them (`CoreMsg::Batch`) and one answer back from it. Answers one outcome per copy, in
    /// the batch's order.
    pub(super) async fn on_replicate_batch(
        self: &Rc<Self>,
        copies: Vec<OwnedReplica>,
        sender: Option<SocketAddr>,
    ) -> Out {
        // (hash, epoch, lifetime) of each copy, for recording it once applied.
        let meta: Vec<([u8; 16], u32, u32)> = copies
            .iter()
            .map(|c| (c.hash, c.epoch, c.lifetime_s))
            .collect();
        let hashes: Vec<[u8; 16]> = meta.iter().map(|m| m.0).collect();
        for h in &hashes {
            self.settled(h).await;
        }
        let (mut outcomes, by_core) = split_batch(
            copies,
            self.node.resolved.shards as usize,
            self.cores.len(),
            |c| self.stale_copy(c.hash, c.epoch, sender).is_some(),
        );
        // Every copy that goes to a core has its placement recorded first (`copy_arriving`).
        let mut arriving: Vec<Option<Arriving>> = vec![None; meta.len()];
        for entries in &by_core {
            for (i, _, _) in entries {
                let (hash, epoch, _) = meta[*i];
                arriving[*i] = Some(self.copy_arriving(hash, epoch, sender));
            }
        }
        // One journal batch for the batch's placements; its fdatasync runs while the shards
        // apply the copies.
        let first = self.submit_for(&hashes);
        let mut waits = Vec::new();
        for (core, entries) in by_core.into_iter().enumerate() {
            if entries.is_empty() {
                continue;
            }
            let (tx, rx) = flume::bounded(1);
            let replies = ReplyTo::batch(entries.len(), tx);
            let mut indexes = Vec::with_capacity(entries.len());
            let requests: Vec<ShardRequest> = entries
                .into_iter()
                .zip(replies)
                .map(|((i, shard, copy), reply)| {
                    indexes.push(i);
                    ShardRequest {
                        shard,
                        key: SessionKey(copy.hash),
                        owner: self.next_owner(),
                        op: Self::apply_op(copy),
                        reply,
                    }
                })
                .collect();
            // A core that is gone drops the requests: each reply then answers Internal.
            let _ = self.cores[core].send_async(CoreMsg::Batch(requests)).await;
            waits.push((indexes, rx));
        }
        for (indexes, rx) in waits {
            let frames = rx.recv_async().await.unwrap_or_default();
            for (n, i) in indexes.into_iter().enumerate() {
                let r = match frames.get(n).map(|f| decode_reply(f, &self.limits)) {
                    Some(Ok((f, _))) => OwnedReply::from_wire(&f.message),
                    _ => unavailable("the daemon is stopping"),
                };
                let (hash, _, lifetime_s) = meta[i];
                let Some(arrived) = arriving[i].take() else {
                    continue;
                };
                outcomes[i] = match self.copy_applied(hash, lifetime_s, arrived, r) {
                    Ok(version) => BatchOutcome::Held { version },
                    Err((code, message)) => {
                        debug!("cluster: a batched copy was not applied: {message}");
                        BatchOutcome::Refused(code)
                    }
                };
            }
        }
        let then = self.submit_for(&hashes);
        self.committed(first).await;
        self.committed(then).await;
        let mut bytes = Vec::with_capacity(outcomes.len() * OutcomeList::ENTRY_LEN);
        for ((hash, _, _), outcome) in meta.iter().zip(outcomes) {
            OutcomeList::push(&mut bytes, hash, outcome);
        }
        Out::ReplicateBatchAck(bytes)
    }
}
