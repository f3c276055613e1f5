//! `drover_security::CertIdentity::of` on arbitrary DER: how the servers read a TLS client's role
//! and name (x509 parsing, the subject's common name, the SAN's role names).
//!
//! Checks: nothing panics, whatever the bytes.
#![no_main]

use drover_security::CertIdentity;
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::CertificateDer;

fuzz_target!(|data: &[u8]| {
    if let Ok(identity) = CertIdentity::of(&CertificateDer::from(data)) {
        let _ = identity.describe();
    }
});
