//! End-to-end tests: each starts its own Mosquitto on free loopback ports and runs the real binaries.

mod collector;
mod connection;
mod device_sim;
mod faults;
mod harness;
mod operator_kit;
mod security;
