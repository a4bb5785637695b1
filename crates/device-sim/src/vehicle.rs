//! The simulated vehicle: a seeded model of speed, on-board computer load and
//! camera detections that turns into one [`Telemetry`] reading per step.
//!
//! Speed follows a driver who picks a target (a stop, town or motorway speed),
//! accelerates or brakes toward it at a limited rate, and wobbles a little on the
//! way; the change per step is bounded so a reading never jumps. CPU, RAM and
//! disk are random walks held inside their ranges; network counters only grow.
//! The same seed and device index always give the same sequence of readings.

use mqtt_core::message::Telemetry;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Top speed, km/h.
pub const MAX_SPEED: f64 = 120.0;
/// Largest speed change from one step to the next, km/h (braking included).
pub const MAX_STEP_CHANGE: f64 = 12.0;
/// Largest speed gain per step from accelerating, km/h.
const MAX_ACCEL: f64 = 6.0;
/// Largest speed loss per step from braking, km/h.
const MAX_BRAKE: f64 = 10.0;
/// Speed wobble per step, km/h (either way).
const NOISE: f64 = 1.5;

const GIB: u64 = 1 << 30;

/// What the camera may report; "none" when nothing is in view.
pub const LABELS: &[&str] = &[
    "none",
    "car",
    "truck",
    "bus",
    "pedestrian",
    "bicycle",
    "motorcycle",
    "traffic_light",
    "stop_sign",
];

/// One simulated vehicle. Small on purpose: a fleet holds thousands of them.
#[derive(Debug, Clone)]
pub struct Vehicle {
    rng: SmallRng,
    speed: f64,
    target: f64,
    steps_to_new_target: u32,
    cpu: f64,
    ram: f64,
    memory_total: u64,
    disk_total: u64,
    disk_used: u64,
    net_sent: u64,
    net_recv: u64,
    label: usize,
    label_steps: u32,
    confidence: f64,
}

/// The readings of one step, before they become a payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Reading {
    /// km/h, 0 to [`MAX_SPEED`].
    pub speed: f64,
    /// Percent, 1 to 100.
    pub cpu_usage: f64,
    /// Percent, 5 to 98.
    pub ram_usage: f64,
    /// Bytes.
    pub memory_total: u64,
    /// Bytes.
    pub memory_used: u64,
    /// Bytes.
    pub disk_total: u64,
    /// Bytes.
    pub disk_used: u64,
    /// Counter, bytes.
    pub network_bytes_sent: u64,
    /// Counter, bytes.
    pub network_bytes_recv: u64,
    /// One of [`LABELS`].
    pub detection_label: &'static str,
    /// 0 to 1.
    pub detection_confidence: f64,
}

impl Vehicle {
    /// The vehicle `index` of a fleet run with `seed`.
    pub fn new(seed: u64, index: u64) -> Self {
        // Mix the index in so neighbouring devices do not get correlated streams.
        let mut rng = SmallRng::seed_from_u64(
            seed ^ index
                .wrapping_add(1)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(17),
        );
        let memory_total = [2, 4, 8, 16][rng.random_range(0..4)] * GIB;
        let disk_total = [32, 64, 128, 256][rng.random_range(0..4)] * GIB;
        let disk_used = (disk_total as f64 * rng.random_range(0.2..0.6)) as u64;
        Vehicle {
            speed: 0.0,
            target: 0.0,
            steps_to_new_target: 0,
            cpu: rng.random_range(10.0..40.0),
            ram: rng.random_range(25.0..60.0),
            memory_total,
            disk_total,
            disk_used,
            net_sent: rng.random_range(0..50_000_000),
            net_recv: rng.random_range(0..200_000_000),
            label: 0,
            label_steps: 0,
            confidence: 0.8,
            rng,
        }
    }

    /// Advances the model by one step (one message interval) and returns its readings.
    pub fn step(&mut self) -> Reading {
        self.step_speed();
        self.step_computer();
        self.step_camera();
        let memory_used = (self.memory_total as f64 * self.ram / 100.0) as u64;
        Reading {
            speed: round2(self.speed),
            cpu_usage: round2(self.cpu),
            ram_usage: round2(self.ram),
            memory_total: self.memory_total,
            memory_used,
            disk_total: self.disk_total,
            disk_used: self.disk_used,
            network_bytes_sent: self.net_sent,
            network_bytes_recv: self.net_recv,
            detection_label: LABELS[self.label],
            detection_confidence: round2(self.confidence),
        }
    }

    /// One step as the contract's payload.
    pub fn telemetry(&mut self, device_id: &str, seq: u64, timestamp: f64) -> Telemetry {
        let r = self.step();
        let memory_available = r.memory_total - r.memory_used;
        let disk_free = r.disk_total - r.disk_used;
        Telemetry {
            device_id: device_id.to_string(),
            seq: Some(seq),
            timestamp,
            speed: r.speed,
            cpu_usage: r.cpu_usage,
            ram_usage: r.ram_usage,
            memory_total: r.memory_total,
            memory_used: r.memory_used,
            memory_available,
            memory_percent: r.ram_usage,
            disk_total: r.disk_total,
            disk_used: r.disk_used,
            disk_free,
            disk_percent: round2(r.disk_used as f64 * 100.0 / r.disk_total as f64),
            network_bytes_sent: r.network_bytes_sent,
            network_bytes_recv: r.network_bytes_recv,
            detection_label: r.detection_label.to_string(),
            detection_confidence: r.detection_confidence,
        }
    }

    fn step_speed(&mut self) {
        if self.steps_to_new_target == 0 {
            // A stop now and then, mostly town speeds, sometimes the motorway.
            let roll: f64 = self.rng.random();
            self.target = if roll < 0.15 {
                0.0
            } else if roll < 0.7 {
                self.rng.random_range(25.0..60.0)
            } else {
                self.rng.random_range(80.0..MAX_SPEED)
            };
            self.steps_to_new_target = self.rng.random_range(5..40);
        }
        self.steps_to_new_target -= 1;
        let wanted = ((self.target - self.speed) * 0.3).clamp(-MAX_BRAKE, MAX_ACCEL);
        let stopped = self.target == 0.0 && self.speed < 2.0;
        let noise = if stopped {
            -self.speed
        } else {
            self.rng.random_range(-NOISE..NOISE)
        };
        let change = (wanted + noise).clamp(-MAX_STEP_CHANGE, MAX_STEP_CHANGE);
        self.speed = (self.speed + change).clamp(0.0, MAX_SPEED);
    }

    fn step_computer(&mut self) {
        // Random walks pulled gently back toward a typical level, then clamped.
        let moving = self.speed > 1.0;
        let cpu_level = if moving { 45.0 } else { 20.0 };
        self.cpu += self.rng.random_range(-4.0..4.0) + (cpu_level - self.cpu) * 0.05;
        self.cpu = self.cpu.clamp(1.0, 100.0);
        self.ram += self.rng.random_range(-1.5..1.5) + (50.0 - self.ram) * 0.02;
        self.ram = self.ram.clamp(5.0, 98.0);
        // Logs and recordings fill the disk slowly; a cleanup frees space now and then.
        self.disk_used += self.rng.random_range(0..2_000_000);
        if self.disk_used > self.disk_total / 10 * 9 || self.rng.random_ratio(1, 2000) {
            self.disk_used = (self.disk_total as f64 * self.rng.random_range(0.2..0.4)) as u64;
        }
        self.net_sent += self.rng.random_range(2_000..60_000);
        self.net_recv += self.rng.random_range(1_000..30_000) + (self.speed * 200.0) as u64;
    }

    fn step_camera(&mut self) {
        if self.label_steps == 0 {
            self.label = if self.rng.random_bool(0.3) {
                0
            } else {
                self.rng.random_range(1..LABELS.len())
            };
            self.label_steps = self.rng.random_range(1..10);
            self.confidence = self.rng.random_range(0.55..0.99);
        }
        self.label_steps -= 1;
        self.confidence = (self.confidence + self.rng.random_range(-0.03..0.03)).clamp(0.3, 0.999);
    }
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn speed_stays_between_0_and_120_and_changes_smoothly() {
        let mut saw_fast = false;
        let mut saw_stop = false;
        for seed in 0..20 {
            let mut v = Vehicle::new(seed, 3);
            let mut last = 0.0;
            for _ in 0..20_000 {
                let r = v.step();
                assert!((0.0..=MAX_SPEED).contains(&r.speed), "{}", r.speed);
                // Rounding to 2 decimals may add up to 0.01 to the change.
                assert!(
                    (r.speed - last).abs() <= MAX_STEP_CHANGE + 0.011,
                    "{last} -> {}",
                    r.speed
                );
                saw_fast |= r.speed > 90.0;
                saw_stop |= r.speed == 0.0;
                last = r.speed;
            }
        }
        assert!(
            saw_fast && saw_stop,
            "the model should both stop and reach motorway speed"
        );
    }

    #[test]
    fn same_seed_same_readings_other_seed_other_readings() {
        let run = |seed, index| {
            let mut v = Vehicle::new(seed, index);
            (0..200).map(|_| v.step()).collect::<Vec<_>>()
        };
        assert_eq!(run(42, 1), run(42, 1));
        assert_ne!(run(42, 1), run(43, 1));
        assert_ne!(run(42, 1), run(42, 2));
    }

    #[test]
    fn computer_readings_stay_in_range_and_counters_only_grow() {
        let mut v = Vehicle::new(7, 0);
        let mut last = v.step();
        for _ in 0..50_000 {
            let r = v.step();
            assert!((1.0..=100.0).contains(&r.cpu_usage));
            assert!((5.0..=98.0).contains(&r.ram_usage));
            assert!(r.memory_used <= r.memory_total);
            assert!(r.disk_used <= r.disk_total);
            assert!((0.0..=1.0).contains(&r.detection_confidence));
            assert!(LABELS.contains(&r.detection_label));
            assert!(r.network_bytes_sent > last.network_bytes_sent);
            assert!(r.network_bytes_recv > last.network_bytes_recv);
            last = r;
        }
    }

    #[test]
    fn telemetry_has_consistent_memory_and_disk_figures() {
        let t = Vehicle::new(1, 1).telemetry("vehicle_01", 5, 1_700_000_000.5);
        assert_eq!(t.seq, Some(5));
        assert_eq!(t.device_id, "vehicle_01");
        assert_eq!(t.memory_used + t.memory_available, t.memory_total);
        assert_eq!(t.disk_used + t.disk_free, t.disk_total);
        assert!((0.0..=100.0).contains(&t.disk_percent));
    }
}
