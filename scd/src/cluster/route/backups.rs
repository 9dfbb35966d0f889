//! Backup changes: moving a session's copy to a new backup (after a failed copy, a backup that
//! went down, drained or was replaced), recording the moves in the placement journal in one
//! batch, and giving sessions without a backup one when a node is up.

use super::*;

impl State {
    /// Picks a new backup for a session this node masters (the old one is gone or draining),
    /// copies it there under a new epoch, and records it. The client learns the new ID on its
    /// next read. Only when `gone` may be dropped (`may_drop_backup`, or `checked` by the
    /// caller): it refuses connections (its process is gone, `cluster.failover_on_refused`),
    /// announced it is draining, or another node witnessed its silence (or none is left, with
    /// `cluster.allow_alone`); otherwise `gone` may be alive behind a partition and may have
    /// taken the session over, so the placement stays as it is (no lease from `gone`: the
    /// session waits) and this returns false. When no other node takes the copy, the session
    /// goes on without a backup, unless `gone` is only draining (then it waits too).
    /// True: the placement changed (or another change overtook this one).
    pub(super) async fn move_backup(
        self: &Rc<Self>,
        hash: [u8; 16],
        p: Placement,
        gone: SocketAddr,
        copy: Option<OwnedReplica>,
        checked: Option<BackupLoss>,
    ) -> bool {
        let Some(m) = self.copy_to_new_backup(hash, p, gone, copy, checked).await else {
            return false;
        };
        let c = self.record_backup_moves(gone, &[m]);
        self.committed(c).await;
        true
    }

    /// The first half of `move_backup`: checks `gone` may be dropped and copies the session to
    /// a new backup (if another node takes it). None: the session keeps `gone` and waits.
    /// Nothing is recorded: `record_backup_moves` does that for one or many.
    pub(super) async fn copy_to_new_backup(
        self: &Rc<Self>,
        hash: [u8; 16],
        p: Placement,
        gone: SocketAddr,
        copy: Option<OwnedReplica>,
        checked: Option<BackupLoss>,
    ) -> Option<BackupMove> {
        let generation = self.rejoin_gen.get();
        let epoch = p.epoch + 1;
        let loss = match checked {
            Some(l) => l,
            None => match self.may_drop_backup(gone, epoch).await {
                Ok(l) => l,
                Err(why) => {
                    warn!(
                        "cluster: the backup {gone} of a session is not replaced: {why}; the \
                         session keeps it as backup and waits"
                    );
                    return None;
                }
            },
        };
        let exclude = [self.me, gone];
        let nb = self.members.borrow().choose_backup(&exclude);
        let copy = match copy {
            Some(c) => Some(c),
            None => self.copy_of(hash, epoch).await,
        };
        let version = copy.as_ref().map(|c| c.version);
        let mut placed = None;
        match (nb, copy) {
            (Some(nb), Some(copy)) => {
                let copy = OwnedReplica { epoch, ..copy };
                match self.replicate(nb, copy.as_wire()).await {
                    Ok(()) => placed = Some(nb),
                    Err(_) => warn!("cluster: new backup {nb} did not take the copy either"),
                }
            }
            // Nothing written yet (or nothing left): the first write goes there.
            (Some(nb), None) => placed = Some(nb),
            (None, _) => {}
        }
        if placed.is_none() && loss == BackupLoss::Draining {
            warn!(
                "cluster: no other node took the copy of a session whose backup {gone} is \
                 draining: the session keeps it as backup and waits"
            );
            return None;
        }
        Some(BackupMove {
            hash,
            p,
            placed,
            version,
            generation,
        })
    }

    /// The second half of `move_backup`: records the new backups of sessions copied by
    /// `copy_to_new_backup`, all staged in one journal batch (the lease denial of `gone` first,
    /// when it was declared down) that the caller awaits before anything acts on them. A move
    /// under which a rejoin started or the placement changed is abandoned: what that set stands.
    pub(super) fn record_backup_moves(&self, gone: SocketAddr, moves: &[BackupMove]) -> Commit {
        let current: Vec<&BackupMove> = moves
            .iter()
            .filter(|m| {
                // A rejoin started meanwhile (this node may not be the master any more), or the
                // placement changed under this copy.
                self.rejoin_gen.get() == m.generation && self.placement(&m.hash) == Some(m.p)
            })
            .collect();
        if current.len() < moves.len() {
            info!(
                "cluster: {} backup replacements abandoned (a rejoin started or their placement \
                 changed meanwhile)",
                moves.len() - current.len()
            );
        }
        if current.is_empty() {
            return Commit(0);
        }
        if self.members.borrow().known_down(gone) {
            // Replaced after it was declared down: when it is heard again it must rejoin before
            // it serves (it may hold a stale copy of these sessions as a backup).
            self.stage_deny(
                gone,
                format!(
                    "{} replaced you as a backup after declaring you down",
                    self.me
                ),
            );
        }
        for m in current {
            Counters::bump(&self.shared().counters.backups_replaced);
            let epoch = m.p.epoch + 1;
            info!(
                "cluster: session backup {gone} replaced by {} (epoch {epoch})",
                m.placed
                    .map_or("none (no other node alive)".to_string(), |a| a.to_string())
            );
            self.stage_placement(
                m.hash,
                Placement {
                    epoch,
                    master: Some(self.me),
                    backup: m.placed,
                    prev: m.p.prev,
                },
            );
        }
        self.journal_submit()
    }

    /// A node went down or is draining: every session this node masters with it as backup gets
    /// a new backup (one at a time, in the background).
    pub(super) fn replace_backup_everywhere(self: &Rc<Self>, gone: SocketAddr) {
        let list: Vec<([u8; 16], Placement)> = self
            .placements
            .borrow()
            .iter()
            .filter(|(_, p)| p.master == Some(self.me) && p.backup == Some(gone))
            .map(|(h, p)| (*h, *p))
            .collect();
        if list.is_empty() {
            return;
        }
        info!(
            "cluster: {} sessions had {gone} as backup; copying them to new backups",
            list.len()
        );
        let me = self.clone();
        monoio::spawn(async move {
            // One witness question for them all (the epoch it names is the first session's).
            let epoch = list.first().map_or(0, |(_, p)| p.epoch + 1);
            let loss = match me.may_drop_backup(gone, epoch).await {
                Ok(l) => l,
                Err(why) => {
                    // `gone` may be alive behind a partition: the sessions keep it as backup
                    // and wait for its lease (their next request asks again).
                    warn!(
                        "cluster: the {} sessions {gone} backed up keep it as backup and wait: \
                         {why}",
                        list.len()
                    );
                    return;
                }
            };
            // Every session is copied first; their new placements are then recorded in one
            // journal batch (one fdatasync, not one per session), durable before this task goes
            // on. Until then each session keeps its old placement (a write meanwhile repairs
            // its own backup, and this move of it is abandoned).
            let mut moves = Vec::new();
            let mut todo = list;
            for round in 1..=BACKUP_MOVE_ROUNDS {
                for (hash, p) in todo.drain(..) {
                    // Skip those a write already repaired meanwhile.
                    if me.placement(&hash) == Some(p) {
                        if let Some(m) =
                            me.copy_to_new_backup(hash, p, gone, None, Some(loss)).await
                        {
                            moves.push(m);
                        }
                    }
                }
                // A session written since its copy (`gone` still takes writes while it
                // drains) would get a new backup holding an older version: copied again, or,
                // after the last round, left to its next write's repair. No await from this
                // check to the recording below.
                let hashes: Vec<[u8; 16]> = moves.iter().map(|m| m.hash).collect();
                let now = me.versions(&hashes).await;
                let (same, written): (Vec<BackupMove>, Vec<BackupMove>) = moves
                    .into_iter()
                    .partition(|m| now.get(&m.hash).copied() == m.version);
                moves = same;
                if written.is_empty() {
                    break;
                }
                if round == BACKUP_MOVE_ROUNDS {
                    info!(
                        "cluster: {} sessions {gone} backed up were written during their copy: \
                         left to their next write's repair",
                        written.len()
                    );
                    break;
                }
                todo = written.into_iter().map(|m| (m.hash, m.p)).collect();
            }
            let c = me.record_backup_moves(gone, &moves);
            me.committed(c).await;
        });
    }

    /// A node came up: sessions this node masters without a backup get one (copied there under
    /// a new epoch; clients learn the new ID on their next read).
    pub(super) fn add_missing_backups(self: &Rc<Self>) {
        // Not while rejoining: what this node believes it masters may have been taken over (the
        // rejoin runs this again when it ends).
        if !self.node.settings.cluster.ha || !self.ready.get() {
            return;
        }
        let list: Vec<([u8; 16], Placement)> = self
            .placements
            .borrow()
            .iter()
            .filter(|(_, p)| p.master == Some(self.me) && p.backup.is_none())
            .map(|(h, p)| (*h, *p))
            .collect();
        if list.is_empty() {
            return;
        }
        let me = self.clone();
        monoio::spawn(async move {
            for (hash, p) in list {
                if me.placement(&hash) != Some(p) {
                    continue;
                }
                let Some(copy) = me.copy_of(hash, p.epoch + 1).await else {
                    // Nothing written yet: the first write picks the backup.
                    continue;
                };
                if !me.ready.get() || me.placement(&hash) != Some(p) {
                    // A rejoin started meanwhile (it runs this again), or the placement moved.
                    continue;
                }
                let Some(nb) = me.members.borrow().choose_backup(&[me.me]) else {
                    return;
                };
                let epoch = copy.epoch;
                if me.replicate(nb, copy.as_wire()).await.is_ok() && me.placement(&hash) == Some(p)
                {
                    Counters::bump(&me.shared().counters.backups_replaced);
                    let c = me.set_placement(
                        hash,
                        Placement {
                            epoch,
                            backup: Some(nb),
                            ..p
                        },
                    );
                    me.committed(c).await;
                }
            }
        });
    }
}
