//! Bytes on the wire, counted by the kernel per TCP socket (`ss -tin`): what the
//! broker's side of every connection on one port sent and received, TLS records
//! and all, so plain and TLS can be compared on the same work.

use anyhow::{Context, Result};
use std::collections::HashMap;
use std::process::Command;

/// Counters of one socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// TCP payload bytes sent.
    pub bytes_sent: u64,
    /// TCP payload bytes received.
    pub bytes_received: u64,
    /// Segments sent.
    pub segs_out: u64,
    /// Segments received.
    pub segs_in: u64,
}

/// The broker-side sockets of one listening port, by peer address.
#[derive(Debug, Clone, Default)]
pub struct Snapshot(HashMap<String, Counters>);

/// IPv4 (20) + TCP (20) + the timestamp option (12) that Linux puts on every segment.
pub const HEADER_BYTES_PER_SEGMENT: u64 = 52;

impl Snapshot {
    /// Reads the counters of every established connection to local `port`.
    pub fn take(port: u16) -> Result<Snapshot> {
        let out = Command::new("ss")
            .args(["-tinH", "state", "established"])
            .arg(format!("( sport = :{port} )"))
            .output()
            .context("running ss (apt-get install iproute2)")?;
        Ok(Self::parse(&String::from_utf8_lossy(&out.stdout)))
    }

    fn parse(text: &str) -> Snapshot {
        let mut map = HashMap::new();
        let mut peer: Option<String> = None;
        for line in text.lines() {
            if line.starts_with(char::is_whitespace) {
                if let Some(p) = peer.take() {
                    let mut c = Counters::default();
                    for word in line.split_whitespace() {
                        if let Some((k, v)) = word.split_once(':') {
                            let v = v.parse().unwrap_or(0);
                            match k {
                                "bytes_sent" => c.bytes_sent = v,
                                "bytes_received" => c.bytes_received = v,
                                "segs_out" => c.segs_out = v,
                                "segs_in" => c.segs_in = v,
                                _ => {}
                            }
                        }
                    }
                    map.insert(p, c);
                }
            } else {
                // recv-q send-q local peer
                peer = line.split_whitespace().nth(3).map(str::to_string);
            }
        }
        Snapshot(map)
    }

    /// What happened between `self` and `later`, over connections seen in `later`
    /// (a connection that is new in `later` counts from zero).
    pub fn delta(&self, later: &Snapshot) -> Counters {
        let mut d = Counters::default();
        for (peer, l) in &later.0 {
            let e = self.0.get(peer).copied().unwrap_or_default();
            d.bytes_sent += l.bytes_sent.saturating_sub(e.bytes_sent);
            d.bytes_received += l.bytes_received.saturating_sub(e.bytes_received);
            d.segs_out += l.segs_out.saturating_sub(e.segs_out);
            d.segs_in += l.segs_in.saturating_sub(e.segs_in);
        }
        d
    }
}

impl Snapshot {
    /// Like [`Snapshot::delta`], over connections present in both snapshots only
    /// (steady traffic, without handshakes of connections that came meanwhile).
    pub fn delta_common(&self, later: &Snapshot) -> Counters {
        let both = Snapshot(
            later
                .0
                .iter()
                .filter(|(p, _)| self.0.contains_key(*p))
                .map(|(p, c)| (p.clone(), *c))
                .collect(),
        );
        self.delta(&both)
    }
}

impl Counters {
    /// Payload bytes both ways.
    pub fn payload_bytes(&self) -> u64 {
        self.bytes_sent + self.bytes_received
    }

    /// Payload plus IPv4/TCP headers, both ways.
    pub fn ip_bytes(&self) -> u64 {
        self.payload_bytes() + HEADER_BYTES_PER_SEGMENT * (self.segs_out + self.segs_in)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ss_output() {
        let text = "0      0      127.0.0.1:41081 127.0.0.1:43930\n\t bbr wscale:10,10 rto:204 bytes_sent:10 bytes_acked:10 bytes_received:1000 segs_out:2 segs_in:4 data_segs_out:1\n0 0 127.0.0.1:41081 127.0.0.1:43931\n\t bytes_sent:5 bytes_received:7 segs_out:1 segs_in:1\n";
        let s = Snapshot::parse(text);
        assert_eq!(s.0.len(), 2);
        let mut before = Snapshot::default();
        before.0.insert(
            "127.0.0.1:43930".into(),
            Counters {
                bytes_sent: 4,
                bytes_received: 500,
                segs_out: 1,
                segs_in: 2,
            },
        );
        let d = before.delta(&s);
        assert_eq!(d.bytes_sent, 6 + 5);
        assert_eq!(d.bytes_received, 500 + 7);
        assert_eq!(d.segs_out + d.segs_in, 3 + 2);
        assert_eq!(d.ip_bytes(), d.payload_bytes() + 5 * 52);
    }
}
