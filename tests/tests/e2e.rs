//! End-to-end tests: each starts its own Mosquitto on free loopback ports and runs the real binaries.

mod broker_config;
mod certgen;
mod collector;
mod compose;
mod connection;
mod demo;
mod device_sim;
mod docs;
mod env_examples;
mod faults;
mod first_run;
mod harness;
mod kit;
mod metrics;
mod scale_out;
mod security;
mod stores;
mod tls_guide;
mod troubleshooting;
