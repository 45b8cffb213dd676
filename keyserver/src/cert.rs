//! Certificate and public-key helpers: key ids, key kinds, client identities.

use rustls::pki_types::{alg_id, CertificateDer};
use rustls::{SignatureAlgorithm, SignatureScheme};

use crate::wire::KeyId;

/// Kind of a public key, from its SubjectPublicKeyInfo algorithm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// ECDSA on P-256.
    EcdsaP256,
    /// ECDSA on P-384.
    EcdsaP384,
    /// RSA (any size).
    Rsa,
    /// Ed25519.
    Ed25519,
}

impl KeyKind {
    /// Reads the algorithm of a SubjectPublicKeyInfo DER.
    pub fn from_spki(spki: &[u8]) -> Option<Self> {
        let (outer, _) = der_read(spki, 0x30)?;
        let (alg, _) = der_read(outer, 0x30)?;
        [
            (alg_id::ECDSA_P256, KeyKind::EcdsaP256),
            (alg_id::ECDSA_P384, KeyKind::EcdsaP384),
            (alg_id::RSA_ENCRYPTION, KeyKind::Rsa),
            (alg_id::ED25519, KeyKind::Ed25519),
        ]
        .into_iter()
        .find(|(id, _)| id.as_ref() == alg)
        .map(|(_, kind)| kind)
    }

    /// The schemes this key can sign with, most preferred first (PSS before PKCS#1 for RSA).
    pub fn schemes(self) -> &'static [SignatureScheme] {
        use SignatureScheme as S;
        match self {
            KeyKind::EcdsaP256 => &[S::ECDSA_NISTP256_SHA256],
            KeyKind::EcdsaP384 => &[S::ECDSA_NISTP384_SHA384],
            KeyKind::Ed25519 => &[S::ED25519],
            KeyKind::Rsa => &[
                S::RSA_PSS_SHA512,
                S::RSA_PSS_SHA384,
                S::RSA_PSS_SHA256,
                S::RSA_PKCS1_SHA512,
                S::RSA_PKCS1_SHA384,
                S::RSA_PKCS1_SHA256,
            ],
        }
    }

    /// The rustls algorithm family.
    pub fn algorithm(self) -> SignatureAlgorithm {
        match self {
            KeyKind::EcdsaP256 | KeyKind::EcdsaP384 => SignatureAlgorithm::ECDSA,
            KeyKind::Rsa => SignatureAlgorithm::RSA,
            KeyKind::Ed25519 => SignatureAlgorithm::ED25519,
        }
    }

    /// Short name for logs.
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::EcdsaP256 => "ecdsa-p256",
            KeyKind::EcdsaP384 => "ecdsa-p384",
            KeyKind::Rsa => "rsa",
            KeyKind::Ed25519 => "ed25519",
        }
    }
}

/// The SubjectPublicKeyInfo DER of a certificate.
pub fn certificate_spki(cert: &CertificateDer<'_>) -> Result<Vec<u8>, rustls::Error> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert)?;
    Ok(parsed.subject_public_key_info().as_ref().to_vec())
}

/// The key id the Key Server uses for the key certified by `cert`.
pub fn certificate_key_id(cert: &CertificateDer<'_>) -> Result<KeyId, rustls::Error> {
    Ok(KeyId::from_spki(&certificate_spki(cert)?))
}

/// The public key bits of a SubjectPublicKeyInfo (the BIT STRING contents without the
/// unused-bits byte): an uncompressed EC point, an RSAPublicKey DER, or an Ed25519 key.
pub fn spki_public_key(spki: &[u8]) -> Option<&[u8]> {
    let (outer, _) = der_read(spki, 0x30)?;
    let (_, rest) = der_read(outer, 0x30)?;
    let (bits, _) = der_read(rest, 0x03)?;
    bits.split_first().filter(|(unused, _)| **unused == 0).map(|(_, b)| b)
}

/// Names identifying a TLS client: its subject CN and DNS SANs.
pub fn client_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return Vec::new();
    };
    let mut names: Vec<String> = ee.valid_dns_names().map(str::to_owned).collect();
    if let Some(cn) = subject_common_name(ee.subject()) {
        if !names.contains(&cn) {
            names.insert(0, cn);
        }
    }
    names
}

/// The first commonName in an X.501 Name given as the contents of its SEQUENCE.
fn subject_common_name(mut name: &[u8]) -> Option<String> {
    const CN_OID: &[u8] = &[0x55, 0x04, 0x03];
    while !name.is_empty() {
        let (set, rest) = der_read(name, 0x31)?;
        name = rest;
        let mut atvs = set;
        while !atvs.is_empty() {
            let (atv, rest) = der_read(atvs, 0x30)?;
            atvs = rest;
            let (oid, value) = der_read(atv, 0x06)?;
            if oid == CN_OID {
                let (tag, body) = (*value.first()?, value);
                // UTF8String, PrintableString, IA5String, T61String
                if matches!(tag, 0x0c | 0x13 | 0x16 | 0x14) {
                    let (s, _) = der_read(body, tag)?;
                    return std::str::from_utf8(s).ok().map(str::to_owned);
                }
            }
        }
    }
    None
}

/// Reads one DER TLV with the expected tag; returns (contents, rest).
fn der_read(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, mut rest) = rest.split_first()?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return None;
    }
    Some(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_read_refuses_truncation_and_wrong_tags() {
        assert_eq!(
            der_read(&[0x30, 0x02, 1, 2, 3], 0x30),
            Some((&[1u8, 2][..], &[3u8][..]))
        );
        assert_eq!(der_read(&[0x30, 0x03, 1, 2], 0x30), None);
        assert_eq!(der_read(&[0x31, 0x00], 0x30), None);
        assert_eq!(der_read(&[0x30, 0x81, 0x01, 9], 0x30), Some((&[9u8][..], &[][..])));
        assert_eq!(der_read(&[0x30, 0x85, 0, 0, 0, 0, 1], 0x30), None);
        assert_eq!(der_read(&[], 0x30), None);
    }

    #[test]
    fn common_name_is_found_among_other_attributes() {
        // SET{SEQ{OID 2.5.4.6, PrintableString "DE"}} SET{SEQ{OID 2.5.4.3, UTF8String "lb-1"}}
        let name = [
            0x31, 0x0b, 0x30, 0x09, 0x06, 0x03, 0x55, 0x04, 0x06, 0x13, 0x02, b'D', b'E', 0x31, 0x0d, 0x30, 0x0b, 0x06,
            0x03, 0x55, 0x04, 0x03, 0x0c, 0x04, b'l', b'b', b'-', b'1',
        ];
        assert_eq!(subject_common_name(&name).as_deref(), Some("lb-1"));
        assert_eq!(subject_common_name(&name[..13]), None);
    }
}
