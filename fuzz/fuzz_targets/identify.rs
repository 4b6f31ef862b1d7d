//! Feeds arbitrary requests to event-id and event-type extraction.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hookrelay_fuzz::identify(data));
