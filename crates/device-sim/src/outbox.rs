//! One device's view of its queued messages: which are held in memory, which are
//! waiting for a packet id, which are in flight, and which must be evicted.
//!
//! The queue file is the truth; this keeps only its oldest part in memory (at most
//! `mem_cap` messages) and asks the writer for more when it runs low, so a long
//! outage costs disk, not memory. Packet ids are paired with publishes in the order
//! they were requested (`Sent` events arrive in that order); a message is done
//! when every topic it goes to has been acknowledged. No I/O happens here: the
//! device task turns the answers into publishes and queue commands.

use crate::queue::Row;
use std::collections::VecDeque;

/// The data topic `device/data/{id}`.
pub const DATA: u8 = 1;
/// The legacy topic `vehicle/speed/{id}`.
pub const LEGACY: u8 = 2;

#[derive(Debug)]
struct Entry {
    seq: u64,
    payload: Vec<u8>,
    /// Written to the queue file; only then may it be published.
    committed: bool,
    /// Topics not yet acknowledged.
    pending: u8,
    /// Topics requested or in flight on the current connection.
    sending: u8,
}

/// One device's outbox state.
#[derive(Debug)]
pub struct Outbox {
    mem: VecDeque<Entry>,
    /// Highest seq ever put in `mem`; rows above it are only in the file.
    mem_tail: u64,
    /// Rows only in the file (all newer than `mem_tail`).
    spilled: u64,
    loading: bool,
    evict_debt: u64,
    requested: VecDeque<(u64, u8)>,
    inflight: Vec<(u16, u64, u8)>,
    window: usize,
    limit: u64,
    mem_cap: usize,
    evicted: u64,
}

impl Outbox {
    /// An outbox with `leftover` messages from an earlier run still in the file.
    pub fn new(leftover: u64, window: usize, limit: u64, mem_cap: usize) -> Self {
        Outbox {
            mem: VecDeque::new(),
            mem_tail: 0,
            spilled: leftover,
            loading: false,
            evict_debt: 0,
            requested: VecDeque::new(),
            inflight: Vec::new(),
            window: window.max(1),
            limit: limit.max(1),
            mem_cap: mem_cap.max(1),
            evicted: 0,
        }
    }

    /// Messages of this device in the queue.
    pub fn len(&self) -> u64 {
        self.mem.len() as u64 + self.spilled
    }

    /// Nothing left to deliver.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Messages evicted so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Publishes requested or in flight.
    pub fn outstanding(&self) -> usize {
        self.requested.len() + self.inflight.len()
    }

    /// Adds a freshly generated message (already sent to the queue writer). Returns
    /// the seqs to evict from the file, oldest first, when the limit is passed.
    pub fn push(&mut self, seq: u64, topics: u8, payload: Vec<u8>) -> Vec<u64> {
        if self.spilled == 0 && self.mem.len() < self.mem_cap {
            self.mem.push_back(Entry {
                seq,
                payload,
                committed: false,
                pending: topics,
                sending: 0,
            });
            self.mem_tail = seq;
        } else {
            self.spilled += 1;
        }
        let mut evict = Vec::new();
        while self.len() > self.limit + self.evict_debt {
            match self.mem.pop_front() {
                // Its publishes may still be in flight; their PUBACKs then find nothing.
                Some(e) => evict.push(e.seq),
                // The oldest rows are on their way in from the file: evict them on arrival.
                None => self.evict_debt += 1,
            }
        }
        self.evicted += evict.len() as u64;
        evict
    }

    /// The writer committed every row up to `seq`.
    pub fn committed(&mut self, seq: u64) {
        for e in self.mem.iter_mut().take_while(|e| e.seq <= seq) {
            e.committed = true;
        }
    }

    /// When memory runs low and the file holds more: `(after_seq, limit)` to load.
    pub fn want_load(&mut self) -> Option<(u64, u32)> {
        if self.loading || self.spilled == 0 || self.mem.len() > self.mem_cap / 2 {
            return None;
        }
        self.loading = true;
        Some((self.mem_tail, (self.mem_cap - self.mem.len()) as u32))
    }

    /// Rows arrived from the file. Returns seqs to evict (owed while they were loading).
    pub fn loaded(&mut self, rows: Vec<Row>) -> Vec<u64> {
        self.loading = false;
        if rows.is_empty() && self.spilled > 0 {
            tracing::warn!(
                "the offline queue holds fewer messages than expected ({} missing)",
                self.spilled
            );
            self.spilled = 0;
        }
        for row in rows {
            if row.seq <= self.mem_tail {
                continue;
            }
            self.spilled = self.spilled.saturating_sub(1);
            self.mem_tail = row.seq;
            self.mem.push_back(Entry {
                seq: row.seq,
                payload: row.payload,
                committed: true,
                pending: if row.legacy { DATA | LEGACY } else { DATA },
                sending: 0,
            });
        }
        let mut evict = Vec::new();
        while self.evict_debt > 0 {
            let Some(e) = self.mem.pop_front() else { break };
            self.evict_debt -= 1;
            evict.push(e.seq);
        }
        self.evicted += evict.len() as u64;
        evict
    }

    /// The next publish to request, if the window allows: `(seq, topic, payload)`.
    /// Call [`Outbox::requested`] once the client took it.
    pub fn next_publish(&self) -> Option<(u64, u8, &[u8])> {
        if self.outstanding() >= self.window {
            return None;
        }
        self.mem.iter().filter(|e| e.committed).find_map(|e| {
            let open = e.pending & !e.sending;
            (open != 0).then(|| {
                let bit = open & open.wrapping_neg();
                (e.seq, bit, e.payload.as_slice())
            })
        })
    }

    /// The client accepted the publish of `seq` on `topic`.
    pub fn requested(&mut self, seq: u64, topic: u8) {
        if let Some(e) = self.entry_mut(seq) {
            e.sending |= topic;
        }
        self.requested.push_back((seq, topic));
    }

    /// A publish was written with `pkid`: it pairs with the oldest request.
    pub fn sent(&mut self, pkid: u16) {
        match self.requested.pop_front() {
            Some((seq, topic)) => self.inflight.push((pkid, seq, topic)),
            None => tracing::warn!(pkid, "a packet id arrived for no requested publish"),
        }
    }

    /// The broker acknowledged `pkid`. Returns the seq to delete when the message is done.
    pub fn acked(&mut self, pkid: u16) -> Option<u64> {
        let pos = self.inflight.iter().position(|&(p, _, _)| p == pkid)?;
        let (_, seq, topic) = self.inflight.swap_remove(pos);
        let idx = self.mem.iter().position(|e| e.seq == seq)?;
        let e = &mut self.mem[idx];
        e.pending &= !topic;
        e.sending &= !topic;
        if e.pending == 0 {
            self.mem.remove(idx);
            Some(seq)
        } else {
            None
        }
    }

    /// The connection is gone: everything requested or in flight is unsent again.
    pub fn disconnected(&mut self) {
        self.requested.clear();
        self.inflight.clear();
        for e in &mut self.mem {
            e.sending = 0;
        }
    }

    fn entry_mut(&mut self, seq: u64) -> Option<&mut Entry> {
        self.mem.iter_mut().find(|e| e.seq == seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish_all(o: &mut Outbox) -> Vec<(u64, u8)> {
        let mut out = Vec::new();
        while let Some((seq, topic, _)) = o.next_publish() {
            o.requested(seq, topic);
            out.push((seq, topic));
        }
        out
    }

    #[test]
    fn nothing_is_published_before_it_is_committed() {
        let mut o = Outbox::new(0, 10, 100, 8);
        o.push(1, DATA, b"a".to_vec());
        o.push(2, DATA, b"b".to_vec());
        assert!(o.next_publish().is_none());
        o.committed(1);
        assert_eq!(publish_all(&mut o), vec![(1, DATA)]);
        o.committed(2);
        assert_eq!(publish_all(&mut o), vec![(2, DATA)]);
    }

    #[test]
    fn acks_pair_with_packet_ids_in_request_order_and_the_window_holds() {
        let mut o = Outbox::new(0, 3, 100, 64);
        for seq in 1..=5 {
            o.push(seq, DATA, vec![]);
        }
        o.committed(5);
        assert_eq!(publish_all(&mut o), vec![(1, DATA), (2, DATA), (3, DATA)]);
        o.sent(7);
        o.sent(8);
        o.sent(9);
        assert_eq!(o.acked(8), Some(2));
        assert_eq!(o.acked(8), None);
        assert_eq!(publish_all(&mut o), vec![(4, DATA)]);
        assert_eq!(o.acked(7), Some(1));
        assert_eq!(o.len(), 3);
    }

    #[test]
    fn a_disconnect_makes_everything_in_flight_unsent_again_in_order() {
        let mut o = Outbox::new(0, 10, 100, 64);
        for seq in 1..=4 {
            o.push(seq, DATA, vec![]);
        }
        o.committed(4);
        publish_all(&mut o);
        o.sent(1);
        o.sent(2);
        assert_eq!(o.acked(1), Some(1));
        o.disconnected();
        assert_eq!(o.acked(2), None, "a stale ack from the old connection");
        assert_eq!(publish_all(&mut o), vec![(2, DATA), (3, DATA), (4, DATA)]);
    }

    #[test]
    fn legacy_topic_needs_both_acks() {
        let mut o = Outbox::new(0, 10, 100, 64);
        o.push(1, DATA | LEGACY, vec![]);
        o.committed(1);
        assert_eq!(publish_all(&mut o), vec![(1, DATA), (1, LEGACY)]);
        o.sent(1);
        o.sent(2);
        assert_eq!(o.acked(2), None);
        assert_eq!(o.acked(1), Some(1));
        assert!(o.is_empty());
    }

    #[test]
    fn the_limit_evicts_the_oldest() {
        let mut o = Outbox::new(0, 10, 5, 64);
        let mut evicted = Vec::new();
        for seq in 1..=20 {
            evicted.extend(o.push(seq, DATA, vec![]));
        }
        assert_eq!(evicted, (1..=15).collect::<Vec<_>>());
        assert_eq!(o.evicted(), 15);
        o.committed(20);
        assert_eq!(
            publish_all(&mut o)
                .into_iter()
                .map(|p| p.0)
                .collect::<Vec<_>>(),
            vec![16, 17, 18, 19, 20]
        );
    }

    #[test]
    fn past_the_memory_cap_rows_stay_in_the_file_and_come_back_in_order() {
        let mut o = Outbox::new(0, 2, 1000, 4);
        for seq in 1..=10 {
            o.push(seq, DATA, vec![seq as u8]);
        }
        assert_eq!(o.len(), 10);
        o.committed(10);
        let mut delivered = Vec::new();
        while !o.is_empty() {
            for (seq, _) in publish_all(&mut o) {
                o.sent(seq as u16);
            }
            for pkid in o.inflight.iter().map(|i| i.0).collect::<Vec<_>>() {
                delivered.extend(o.acked(pkid));
            }
            if let Some((after, limit)) = o.want_load() {
                // What the writer would answer: the rows above `after`.
                let rows = (after + 1..=10)
                    .take(limit as usize)
                    .map(|seq| Row {
                        seq,
                        legacy: false,
                        payload: vec![seq as u8],
                    })
                    .collect();
                o.loaded(rows);
            }
        }
        delivered.sort();
        assert_eq!(delivered, (1..=10).collect::<Vec<_>>());
    }

    #[test]
    fn leftovers_are_loaded_first() {
        let mut o = Outbox::new(3, 10, 100, 8);
        assert_eq!(o.want_load(), Some((0, 8)));
        assert_eq!(o.want_load(), None, "one load at a time");
        o.push(11, DATA, vec![]);
        o.loaded(
            [4, 7, 9]
                .map(|seq| Row {
                    seq,
                    legacy: false,
                    payload: vec![],
                })
                .into(),
        );
        // The new message went to the file too (the file had older rows); it comes next.
        assert_eq!(o.len(), 4);
        assert_eq!(
            publish_all(&mut o)
                .into_iter()
                .map(|p| p.0)
                .collect::<Vec<_>>(),
            vec![4, 7, 9]
        );
    }
}
