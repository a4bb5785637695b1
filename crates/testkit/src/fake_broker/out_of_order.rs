//! A FAKE broker on a plain thread, for the one fault Mosquitto cannot produce:
//! PUBACKs out of order (so rumqttc holds a publish back on a packet-id collision)
//! and then the held PUBACK followed at once by a dropped connection. It speaks just enough MQTT 3.1.1
//! for device-sim and records which `seq` values it acknowledged.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Seen {
    acked: BTreeSet<u64>,
    second_connection_publishes: usize,
}

/// The fake broker; it runs until the test process ends.
pub struct OutOfOrderBroker {
    /// Its port on 127.0.0.1.
    pub port: u16,
    seen: Arc<Mutex<Seen>>,
}

fn read_packet(c: &mut TcpStream) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut h = [0u8; 1];
    if c.read(&mut h)? == 0 {
        return Ok(None);
    }
    let (mut len, mut mult) = (0usize, 1usize);
    loop {
        let mut b = [0u8; 1];
        c.read_exact(&mut b)?;
        len += (b[0] & 127) as usize * mult;
        mult *= 128;
        if b[0] & 128 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    c.read_exact(&mut body)?;
    Ok(Some((h[0] >> 4, body)))
}

/// (packet id, seq) of a QoS 1 PUBLISH body.
fn parse_publish(body: &[u8]) -> (u16, u64) {
    let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
    let pkid = u16::from_be_bytes([body[2 + tl], body[3 + tl]]);
    let v: serde_json::Value = serde_json::from_slice(&body[4 + tl..]).unwrap();
    (pkid, v["seq"].as_u64().unwrap())
}

fn puback(pkid: u16) -> [u8; 4] {
    let p = pkid.to_be_bytes();
    [0x40, 0x02, p[0], p[1]]
}

impl OutOfOrderBroker {
    /// Connection 1: holds the first PUBACK and acknowledges the rest; once the client
    /// goes quiet (its packet ids have wrapped onto the held one), sends the held PUBACK
    /// and closes in the same breath. Later connections: only the first PUBLISH is acknowledged.
    pub fn start() -> OutOfOrderBroker {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        std::thread::spawn(move || {
            for (n, conn) in listener.incoming().enumerate() {
                let Ok(mut c) = conn else { continue };
                let _ = Self::serve(n + 1, &mut c, &s);
            }
        });
        OutOfOrderBroker { port, seen }
    }

    fn serve(n: usize, c: &mut TcpStream, seen: &Mutex<Seen>) -> std::io::Result<()> {
        read_packet(c)?; // CONNECT
        c.write_all(&[0x20, 0x02, 0x01, 0x00])?; // CONNACK, session present
        c.set_read_timeout(Some(Duration::from_secs(1)))?;
        let mut held: Option<(u16, u64)> = None;
        let mut acked_here = false;
        loop {
            let packet = match read_packet(c) {
                Ok(Some(p)) => p,
                Ok(None) => return Ok(()),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    if let (1, Some((pkid, seq))) = (n, held) {
                        c.write_all(&puback(pkid))?;
                        seen.lock().unwrap().acked.insert(seq);
                        return c.shutdown(std::net::Shutdown::Both);
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            match packet {
                (12, _) => c.write_all(&[0xd0, 0x00])?, // PINGREQ
                (14, _) => return Ok(()),               // DISCONNECT
                (3, body) => {
                    let (pkid, seq) = parse_publish(&body);
                    if n == 1 {
                        if held.is_none() {
                            held = Some((pkid, seq));
                        } else {
                            c.write_all(&puback(pkid))?;
                            seen.lock().unwrap().acked.insert(seq);
                        }
                    } else {
                        let mut s = seen.lock().unwrap();
                        s.second_connection_publishes += 1;
                        if !acked_here {
                            acked_here = true;
                            s.acked.insert(seq);
                            drop(s);
                            c.write_all(&puback(pkid))?;
                        }
                    }
                }
                _ => {}
            }
        }
    }

    /// Every `seq` this broker acknowledged.
    pub fn acked(&self) -> BTreeSet<u64> {
        self.seen.lock().unwrap().acked.clone()
    }

    /// PUBLISH packets received on connections after the first.
    pub fn later_publishes(&self) -> usize {
        self.seen.lock().unwrap().second_connection_publishes
    }
}
