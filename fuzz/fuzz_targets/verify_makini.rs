//! Feeds arbitrary requests to the makini scheme's verification.

#![no_main]

use hookrelay_fuzz::{SchemeName, verify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| verify(SchemeName::Makini, data));
