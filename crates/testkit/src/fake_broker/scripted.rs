//! A FAKE MQTT 3.1.1 broker on tokio, in-process, for the faults a real Mosquitto
//! does not produce on demand: a connection cut between CONNACK and SUBACK, a CONNACK
//! that claims a session, a broker that drops every connection right after accepting
//! it. It speaks just enough of the protocol for mqtt-core's connection driver.

use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the broker does on one connection.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// The CONNACK's session-present flag.
    pub session_present: bool,
    /// Close the connection right after the CONNACK.
    pub close_after_connack: bool,
    /// What to do with a SUBSCRIBE.
    pub on_subscribe: OnSubscribe,
    /// Close the connection right after the SUBACK.
    pub close_after_suback: bool,
    /// Send the PUBACK of the first PUBLISH and close in the same breath, so the
    /// client reads the acknowledgement and the end of the connection together.
    pub close_after_puback: bool,
}

/// Answers to a SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSubscribe {
    /// SUBACK granting QoS 1 to every filter.
    Grant,
    /// SUBACK with the failure code 0x80 for every filter.
    Refuse,
    /// Close the connection without a SUBACK.
    Cut,
}

impl Plan {
    /// CONNACK with this session flag, every SUBSCRIBE granted, nothing cut.
    pub fn normal(session_present: bool) -> Plan {
        Plan {
            session_present,
            close_after_connack: false,
            on_subscribe: OnSubscribe::Grant,
            close_after_suback: false,
            close_after_puback: false,
        }
    }
}

/// What the broker saw.
#[derive(Debug, Default, Clone)]
pub struct Seen {
    /// CONNECT packets.
    pub connects: usize,
    /// For each SUBSCRIBE: the connection number (from 1) and its filters.
    pub subscribes: Vec<(usize, Vec<String>)>,
    /// For each QoS 1 PUBLISH acknowledged: the connection number.
    pub publishes: Vec<usize>,
}

/// The fake broker; it runs until the tokio runtime that started it ends.
pub struct FakeBroker {
    /// Its port on 127.0.0.1.
    pub port: u16,
    seen: Arc<Mutex<Seen>>,
}

impl FakeBroker {
    /// Starts on a free loopback port; `plan(n)` decides connection n (from 1).
    pub async fn start(plan: impl Fn(usize) -> Plan + Send + Sync + 'static) -> FakeBroker {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        let plan = Arc::new(plan);
        tokio::spawn(async move {
            let mut n = 0;
            while let Ok((stream, _)) = listener.accept().await {
                n += 1;
                let (s, plan) = (s.clone(), plan.clone());
                tokio::spawn(async move {
                    let _ = serve(n, stream, plan(n), &s).await;
                });
            }
        });
        FakeBroker { port, seen }
    }

    /// What it saw so far.
    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }
}

async fn read_packet(c: &mut TcpStream) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut h = [0u8; 1];
    if c.read(&mut h).await? == 0 {
        return Ok(None);
    }
    let (mut len, mut mult) = (0usize, 1usize);
    loop {
        let b = c.read_u8().await?;
        len += (b & 127) as usize * mult;
        mult *= 128;
        if b & 128 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    c.read_exact(&mut body).await?;
    Ok(Some((h[0], body)))
}

fn filters(body: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    let mut i = 2;
    while i + 2 <= body.len() {
        let l = u16::from_be_bytes([body[i], body[i + 1]]) as usize;
        out.push(String::from_utf8_lossy(&body[i + 2..i + 2 + l]).into_owned());
        i += 2 + l + 1;
    }
    out
}

async fn serve(n: usize, mut c: TcpStream, plan: Plan, seen: &Mutex<Seen>) -> std::io::Result<()> {
    match read_packet(&mut c).await? {
        Some((h, _)) if h >> 4 == 1 => seen.lock().unwrap().connects += 1,
        _ => return Ok(()),
    }
    c.write_all(&[0x20, 0x02, plan.session_present as u8, 0x00])
        .await?;
    if plan.close_after_connack {
        return Ok(());
    }
    while let Some((header, body)) = read_packet(&mut c).await? {
        match header >> 4 {
            8 => {
                let f = filters(&body);
                let count = f.len();
                seen.lock().unwrap().subscribes.push((n, f));
                let code = match plan.on_subscribe {
                    OnSubscribe::Grant => 0x01,
                    OnSubscribe::Refuse => 0x80,
                    OnSubscribe::Cut => return Ok(()),
                };
                let mut suback = vec![0x90, 2 + count as u8, body[0], body[1]];
                suback.extend(std::iter::repeat_n(code, count));
                c.write_all(&suback).await?;
                if plan.close_after_suback {
                    return Ok(());
                }
            }
            3 => {
                let qos = (header >> 1) & 3;
                let tl = u16::from_be_bytes([body[0], body[1]]) as usize;
                if qos == 1 && body.len() >= tl + 4 {
                    seen.lock().unwrap().publishes.push(n);
                    c.write_all(&[0x40, 0x02, body[2 + tl], body[3 + tl]])
                        .await?;
                    if plan.close_after_puback {
                        return Ok(());
                    }
                }
            }
            12 => c.write_all(&[0xd0, 0x00]).await?,
            14 => return Ok(()),
            _ => {}
        }
    }
    Ok(())
}
