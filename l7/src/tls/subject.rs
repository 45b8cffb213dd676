//! The subject of a client certificate as text for the upstream request (`X-Client-Cert-Subject`), in the
//! RFC 4514 form NGINX's `$ssl_client_s_dn` uses: most specific first, `CN=client,O=Example,C=DE`.

/// The subject distinguished name of the DER certificate `cert`, or `None` if it does not parse.
pub fn subject(cert: &[u8]) -> Option<String> {
    let der = rustls::pki_types::CertificateDer::from(cert);
    let parsed = webpki::EndEntityCert::try_from(&der).ok()?;
    let mut name = Der(parsed.subject());
    // The subject may come as the Name SEQUENCE or as its contents.
    if name.0.first() == Some(&0x30) {
        name = Der(name.take(0x30)?);
    }
    let mut parts = Vec::new();
    while !name.0.is_empty() {
        let mut rdn = Der(name.take(0x31)?);
        let mut set = Vec::new();
        while !rdn.0.is_empty() {
            let mut atv = Der(rdn.take(0x30)?);
            let oid = atv.take(0x06)?;
            let (_, value) = atv.any()?;
            let value = std::str::from_utf8(value).ok()?;
            set.push(format!("{}={}", attribute_name(oid), escape(value)));
        }
        parts.push(set.join("+"));
    }
    parts.reverse();
    Some(parts.join(","))
}

/// Short names of the usual attributes; others as a dotted OID.
fn attribute_name(oid: &[u8]) -> String {
    match oid {
        [0x55, 0x04, 0x03] => "CN".into(),
        [0x55, 0x04, 0x06] => "C".into(),
        [0x55, 0x04, 0x07] => "L".into(),
        [0x55, 0x04, 0x08] => "ST".into(),
        [0x55, 0x04, 0x0a] => "O".into(),
        [0x55, 0x04, 0x0b] => "OU".into(),
        [0x55, 0x04, 0x05] => "serialNumber".into(),
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC".into(),
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "emailAddress".into(),
        _ => dotted(oid),
    }
}

fn dotted(oid: &[u8]) -> String {
    let mut out = match oid.first() {
        Some(&b) => format!("{}.{}", b / 40, b % 40),
        None => return String::new(),
    };
    let mut v: u64 = 0;
    for &b in &oid[1..] {
        v = (v << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            out.push_str(&format!(".{v}"));
            v = 0;
        }
    }
    out
}

/// Escapes a value as RFC 4514 asks (and control characters, so the header stays one line).
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for (i, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=' => {
                out.push('\\');
                out.push(c);
            }
            '#' | ' ' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => out.push_str(&format!("\\{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    if out.ends_with(' ') {
        out.insert(out.len() - 1, '\\');
    }
    out
}

/// A DER reader over a byte slice.
struct Der<'a>(&'a [u8]);

impl<'a> Der<'a> {
    /// The next element of any tag: (tag, contents).
    fn any(&mut self) -> Option<(u8, &'a [u8])> {
        let (&tag, rest) = self.0.split_first()?;
        let (&first, mut rest) = rest.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |a, &b| (a << 8) | usize::from(b));
            rest = &rest[n..];
            len
        };
        if rest.len() < len {
            return None;
        }
        let (contents, after) = rest.split_at(len);
        self.0 = after;
        Some((tag, contents))
    }

    /// The next element, which must have `tag`.
    fn take(&mut self, tag: u8) -> Option<&'a [u8]> {
        match self.any()? {
            (t, contents) if t == tag => Some(contents),
            _ => None,
        }
    }
}
