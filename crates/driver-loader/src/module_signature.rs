//! A kernel module's appended signature, read the way the kernel and modinfo(8) read it.
//!
//! `scripts/sign-file` (and every distribution's module signing) appends to the ELF image:
//!
//! ```text
//! <ELF image> <PKCS#7 DER, sig_len bytes> <struct module_signature, 12 bytes> "~Module signature appended~\n"
//! ```
//!
//! where `struct module_signature` is `algo u8, hash u8, id_type u8 (2 = PKCS#7), signer_len u8,
//! key_id_len u8, pad[3], sig_len u32 big-endian`; for PKCS#7 every field but `id_type` and `sig_len`
//! must be 0. The PKCS#7 is a CMS SignedData with detached content; its first SignerInfo names the
//! signer, either by issuer and serial number (sign-file's default: modinfo shows the issuer's CN as
//! `signer` and the serial as `sig_key`) or by subject key identifier (`sign-file -k`).
//!
//! The signature covers, and the kernel checks, the *uncompressed* image: kbuild and the distributions
//! sign first and compress afterwards, and the kernel verifies after decompressing (in-kernel
//! decompression with `MODULE_INIT_COMPRESSED_FILE`, or kmod decompressing before `init_module`). The
//! loader therefore reads the signature from the image [`crate::modinfo::read_module_image`] returns,
//! which is exactly the byte string container mode hands to `finit_module`.
//!
//! The DER reader is a small, bounded one written for this purpose (definite lengths of up to four
//! bytes, BER indefinite lengths for constructed values, a nesting limit); it never panics and every
//! malformed input is an error naming the structure that was wrong. No cryptography happens here: the
//! signature is not verified (the kernel does that), only its signer is named.

use std::fmt;

/// What every signed module ends with (`MODULE_SIG_STRING` in the kernel).
pub const MODULE_SIG_MAGIC: &[u8] = b"~Module signature appended~\n";

/// Size of `struct module_signature`.
pub const MODULE_SIGNATURE_INFO_LEN: usize = 12;

/// `id_type` of a PKCS#7 signature (`PKEY_ID_PKCS7`), the only one the kernel accepts.
pub const PKEY_ID_PKCS7: u8 = 2;

/// Nesting limit of the DER reader (a SignerInfo sits at depth 5).
const MAX_DEPTH: usize = 16;

/// A malformed signature: the text names the structure and what was wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SignatureError(String);

impl SignatureError {
    fn new(text: impl Into<String>) -> Self {
        SignatureError(text.into())
    }
}

type Result<T> = std::result::Result<T, SignatureError>;

/// How the signature names its signer (CMS `SignerIdentifier`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignerId {
    /// `issuerAndSerialNumber`: the issuer's name (its common name, as modinfo shows it) and the
    /// certificate's serial number (big-endian magnitude, leading zero bytes dropped, as modinfo shows it).
    IssuerAndSerial {
        issuer_cn: Option<String>,
        serial: Vec<u8>,
    },
    /// `subjectKeyIdentifier`: the key's SKID.
    SubjectKeyIdentifier(Vec<u8>),
}

/// A module's signature, as far as naming the signer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleSignature {
    pub signer: SignerId,
    /// The SignerInfo's digest algorithm: `sha256`, `sha512`... or the dotted OID when unknown.
    pub hash_algo: String,
    /// Length of the PKCS#7 message.
    pub sig_len: usize,
}

impl ModuleSignature {
    /// The signer's name as modinfo(8) shows it (`signer:`): the issuer's CN; `None` when the signature
    /// names its key only by subject key identifier (modinfo then shows no signer at all).
    pub fn signer_name(&self) -> Option<&str> {
        match &self.signer {
            SignerId::IssuerAndSerial { issuer_cn, .. } => issuer_cn.as_deref(),
            SignerId::SubjectKeyIdentifier(_) => None,
        }
    }

    /// The key id bytes: the SKID, or the serial number.
    pub fn key_id(&self) -> &[u8] {
        match &self.signer {
            SignerId::IssuerAndSerial { serial, .. } => serial,
            SignerId::SubjectKeyIdentifier(skid) => skid,
        }
    }

    /// The key id as modinfo(8) shows `sig_key`: colon-separated upper-case hex bytes.
    pub fn key_id_text(&self) -> String {
        colon_hex(self.key_id())
    }

    /// What the key id is: `SKID` or `serial`.
    pub fn key_id_kind(&self) -> &'static str {
        match self.signer {
            SignerId::IssuerAndSerial { .. } => "serial",
            SignerId::SubjectKeyIdentifier(_) => "SKID",
        }
    }
}

impl fmt::Display for ModuleSignature {
    /// `"<CN>" (serial AB:CD, sha256)` or `subject key identifier AB:CD (sha256)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.signer {
            SignerId::IssuerAndSerial { issuer_cn, serial } => write!(
                f,
                "{:?} (key serial {}, {})",
                issuer_cn
                    .as_deref()
                    .unwrap_or("(issuer without a common name)"),
                colon_hex(serial),
                self.hash_algo
            ),
            SignerId::SubjectKeyIdentifier(skid) => write!(
                f,
                "the key with subject key identifier {} ({})",
                colon_hex(skid),
                self.hash_algo
            ),
        }
    }
}

/// Bytes as `AB:CD:EF` (modinfo's `sig_key` format).
pub fn colon_hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Reads the signature appended to an uncompressed module image: `Ok(None)` when the image carries
/// none (it does not end with [`MODULE_SIG_MAGIC`]), an error naming what is wrong when the trailer is
/// there but the signature is malformed.
pub fn read_module_signature(image: &[u8]) -> Result<Option<ModuleSignature>> {
    let Some(body) = image.strip_suffix(MODULE_SIG_MAGIC) else {
        return Ok(None);
    };
    let Some(info_at) = body.len().checked_sub(MODULE_SIGNATURE_INFO_LEN) else {
        return Err(SignatureError::new(format!(
            "module signature: the image ends with the signature marker but only {} byte(s) precede \
             it, fewer than the {MODULE_SIGNATURE_INFO_LEN}-byte struct module_signature",
            body.len()
        )));
    };
    let (rest, info) = body.split_at(info_at);
    let field = |i: usize| info.get(i).copied().unwrap_or_default();
    let id_type = field(2);
    if id_type != PKEY_ID_PKCS7 {
        return Err(SignatureError::new(format!(
            "module signature: struct module_signature.id_type is {id_type}, not {PKEY_ID_PKCS7} \
             (PKCS#7), the only kind the kernel accepts"
        )));
    }
    let nonzero: Vec<String> = [
        ("algo", field(0)),
        ("hash", field(1)),
        ("signer_len", field(3)),
        ("key_id_len", field(4)),
        ("pad[0]", field(5)),
        ("pad[1]", field(6)),
        ("pad[2]", field(7)),
    ]
    .into_iter()
    .filter(|(_, v)| *v != 0)
    .map(|(name, v)| format!("{name}={v}"))
    .collect();
    if !nonzero.is_empty() {
        return Err(SignatureError::new(format!(
            "module signature: struct module_signature has non-zero {} (must be 0 for PKCS#7)",
            nonzero.join(", ")
        )));
    }
    let sig_len = u32::from_be_bytes([field(8), field(9), field(10), field(11)]) as usize;
    if sig_len == 0 {
        return Err(SignatureError::new(
            "module signature: struct module_signature.sig_len is 0: no PKCS#7 message",
        ));
    }
    // The kernel's mod_check_sig: the signature must leave some module before it.
    if sig_len >= rest.len() {
        return Err(SignatureError::new(format!(
            "module signature: struct module_signature.sig_len is {sig_len} but only {} byte(s) \
             precede it (the module and its signature)",
            rest.len()
        )));
    }
    let der = rest.get(rest.len() - sig_len..).unwrap_or_default();
    let (signer, digest_oid) = parse_pkcs7(der)?;
    Ok(Some(ModuleSignature {
        signer,
        hash_algo: hash_algo_name(&digest_oid),
        sig_len,
    }))
}

// ---------------------------------------------------------------------------------------------------
// The DER reader.

const TAG_INTEGER: u8 = 0x02;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OID: u8 = 0x06;
const TAG_SEQUENCE: u8 = 0x30;
const TAG_SET: u8 = 0x31;
const TAG_CONTEXT_0: u8 = 0xa0;
const TAG_CONTEXT_1: u8 = 0xa1;
const TAG_CONTEXT_0_PRIMITIVE: u8 = 0x80;

/// One element: its tag and its contents.
#[derive(Debug, Clone, Copy)]
struct Tlv<'a> {
    tag: u8,
    value: &'a [u8],
}

fn tag_name(tag: u8) -> String {
    match tag {
        TAG_INTEGER => "INTEGER".to_owned(),
        TAG_OCTET_STRING => "OCTET STRING".to_owned(),
        TAG_OID => "OBJECT IDENTIFIER".to_owned(),
        TAG_SEQUENCE => "SEQUENCE".to_owned(),
        TAG_SET => "SET".to_owned(),
        0x05 => "NULL".to_owned(),
        0x0c => "UTF8String".to_owned(),
        0x13 => "PrintableString".to_owned(),
        t if t & 0xc0 == 0x80 => format!(
            "[{}]{}",
            t & 0x1f,
            if t & 0x20 != 0 { "" } else { " primitive" }
        ),
        t => format!("tag 0x{t:02x}"),
    }
}

/// Reads one element from the start of `input`; returns it and what follows it.
fn read_tlv<'a>(input: &'a [u8], what: &str, depth: usize) -> Result<(Tlv<'a>, &'a [u8])> {
    if depth > MAX_DEPTH {
        return Err(SignatureError::new(format!(
            "{what}: nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let Some((&tag, after_tag)) = input.split_first() else {
        return Err(SignatureError::new(format!(
            "{what}: missing (the data ends here)"
        )));
    };
    if tag & 0x1f == 0x1f {
        return Err(SignatureError::new(format!(
            "{what}: multi-byte tag 0x{tag:02x} is not used by PKCS#7 signatures"
        )));
    }
    let Some((&first, after_len)) = after_tag.split_first() else {
        return Err(SignatureError::new(format!(
            "{what}: truncated: no length after the tag"
        )));
    };
    if first == 0x80 {
        // BER indefinite length: constructed only, ended by 00 00.
        if tag & 0x20 == 0 {
            return Err(SignatureError::new(format!(
                "{what}: indefinite length on a primitive {}",
                tag_name(tag)
            )));
        }
        let mut rest = after_len;
        loop {
            if rest.starts_with(&[0, 0]) {
                let used = after_len.len() - rest.len();
                let value = after_len.get(..used).unwrap_or_default();
                let remaining = rest.get(2..).unwrap_or_default();
                return Ok((Tlv { tag, value }, remaining));
            }
            if rest.is_empty() {
                return Err(SignatureError::new(format!(
                    "{what}: truncated: indefinite-length {} has no end-of-contents",
                    tag_name(tag)
                )));
            }
            let (_, next) = read_tlv(rest, what, depth + 1)?;
            rest = next;
        }
    }
    let (len, after_len) = if first < 0x80 {
        (usize::from(first), after_len)
    } else {
        let count = usize::from(first & 0x7f);
        if count > 4 {
            return Err(SignatureError::new(format!(
                "{what}: a length of {count} bytes is beyond any signature"
            )));
        }
        let Some(bytes) = after_len.get(..count) else {
            return Err(SignatureError::new(format!(
                "{what}: truncated: the {count}-byte length is cut off"
            )));
        };
        let len = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (len, after_len.get(count..).unwrap_or_default())
    };
    let Some(value) = after_len.get(..len) else {
        return Err(SignatureError::new(format!(
            "{what}: truncated: {} announces {len} byte(s) but {} remain",
            tag_name(tag),
            after_len.len()
        )));
    };
    Ok((Tlv { tag, value }, after_len.get(len..).unwrap_or_default()))
}

/// The elements of a constructed value, in order.
struct Items<'a> {
    rest: &'a [u8],
    depth: usize,
    /// The structure being read (for messages).
    within: String,
}

impl<'a> Items<'a> {
    fn new(value: &'a [u8], depth: usize, within: impl Into<String>) -> Self {
        Items {
            rest: value,
            depth,
            within: within.into(),
        }
    }

    fn path(&self, field: &str) -> String {
        format!("{}.{field}", self.within)
    }

    fn peek_tag(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    /// The next element, which must exist.
    fn next(&mut self, field: &str) -> Result<Tlv<'a>> {
        let what = self.path(field);
        let (tlv, rest) = read_tlv(self.rest, &what, self.depth)?;
        self.rest = rest;
        Ok(tlv)
    }

    /// The next element, which must have `tag`; returns its contents.
    fn expect(&mut self, field: &str, tag: u8) -> Result<&'a [u8]> {
        let tlv = self.next(field)?;
        if tlv.tag != tag {
            return Err(SignatureError::new(format!(
                "{}: expected {}, found {}",
                self.path(field),
                tag_name(tag),
                tag_name(tlv.tag)
            )));
        }
        Ok(tlv.value)
    }

    /// Skips the next element when it has `tag`.
    fn skip_optional(&mut self, field: &str, tag: u8) -> Result<()> {
        if self.peek_tag() == Some(tag) {
            self.next(field)?;
        }
        Ok(())
    }
}

/// The whole of `der` must be one element with `tag`.
fn single<'a>(der: &'a [u8], what: &str, tag: u8, depth: usize) -> Result<&'a [u8]> {
    let (tlv, rest) = read_tlv(der, what, depth)?;
    if tlv.tag != tag {
        return Err(SignatureError::new(format!(
            "{what}: expected {}, found {}",
            tag_name(tag),
            tag_name(tlv.tag)
        )));
    }
    if !rest.is_empty() {
        return Err(SignatureError::new(format!(
            "{what}: {} unexpected byte(s) after it",
            rest.len()
        )));
    }
    Ok(tlv.value)
}

const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
const OID_COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// Parses the PKCS#7 ContentInfo down to its first SignerInfo: the signer and the digest OID.
fn parse_pkcs7(der: &[u8]) -> Result<(SignerId, Vec<u8>)> {
    let content_info = single(der, "PKCS#7 ContentInfo", TAG_SEQUENCE, 0)?;
    let mut ci = Items::new(content_info, 1, "PKCS#7 ContentInfo");
    let content_type = ci.expect("contentType", TAG_OID)?;
    if content_type != OID_SIGNED_DATA {
        return Err(SignatureError::new(format!(
            "PKCS#7 ContentInfo.contentType is {}, not signedData (1.2.840.113549.1.7.2)",
            oid_text(content_type)
        )));
    }
    let content = ci.expect("content", TAG_CONTEXT_0)?;
    let signed_data = single(content, "PKCS#7 SignedData", TAG_SEQUENCE, 2)?;
    let mut sd = Items::new(signed_data, 3, "PKCS#7 SignedData");
    sd.expect("version", TAG_INTEGER)?;
    sd.expect("digestAlgorithms", TAG_SET)?;
    sd.expect("encapContentInfo", TAG_SEQUENCE)?;
    sd.skip_optional("certificates", TAG_CONTEXT_0)?;
    sd.skip_optional("crls", TAG_CONTEXT_1)?;
    let signer_infos = sd.expect("signerInfos", TAG_SET)?;
    let mut infos = Items::new(signer_infos, 4, "PKCS#7 SignedData.signerInfos");
    if infos.peek_tag().is_none() {
        return Err(SignatureError::new(
            "PKCS#7 SignedData.signerInfos is empty: the signature names no signer",
        ));
    }
    let signer_info = infos.expect("[0]", TAG_SEQUENCE)?;
    let mut si = Items::new(signer_info, 5, "PKCS#7 SignerInfo");
    si.expect("version", TAG_INTEGER)?;
    let sid = si.next("sid")?;
    let signer = match sid.tag {
        TAG_SEQUENCE => {
            let mut ias = Items::new(sid.value, 6, "PKCS#7 SignerInfo.sid.issuerAndSerialNumber");
            let issuer = ias.expect("issuer", TAG_SEQUENCE)?;
            let issuer_cn = name_common_name(issuer)?;
            let serial = ias.expect("serialNumber", TAG_INTEGER)?;
            if serial.is_empty() {
                return Err(SignatureError::new(
                    "PKCS#7 SignerInfo.sid.issuerAndSerialNumber.serialNumber is empty",
                ));
            }
            let first_nonzero = serial.iter().position(|&b| b != 0).unwrap_or(serial.len());
            SignerId::IssuerAndSerial {
                issuer_cn,
                serial: serial.get(first_nonzero..).unwrap_or_default().to_vec(),
            }
        }
        TAG_CONTEXT_0_PRIMITIVE => {
            if sid.value.is_empty() {
                return Err(SignatureError::new(
                    "PKCS#7 SignerInfo.sid.subjectKeyIdentifier is empty",
                ));
            }
            SignerId::SubjectKeyIdentifier(sid.value.to_vec())
        }
        other => {
            return Err(SignatureError::new(format!(
                "PKCS#7 SignerInfo.sid: expected issuerAndSerialNumber (SEQUENCE) or \
                 subjectKeyIdentifier ([0] primitive), found {}",
                tag_name(other)
            )));
        }
    };
    let digest_algorithm = si.expect("digestAlgorithm", TAG_SEQUENCE)?;
    let digest_oid = Items::new(digest_algorithm, 6, "PKCS#7 SignerInfo.digestAlgorithm")
        .expect("algorithm", TAG_OID)?;
    if digest_oid.is_empty() {
        return Err(SignatureError::new(
            "PKCS#7 SignerInfo.digestAlgorithm.algorithm is an empty OBJECT IDENTIFIER",
        ));
    }
    si.skip_optional("signedAttrs", TAG_CONTEXT_0)?;
    si.expect("signatureAlgorithm", TAG_SEQUENCE)?;
    let signature = si.expect("signature", TAG_OCTET_STRING)?;
    if signature.is_empty() {
        return Err(SignatureError::new("PKCS#7 SignerInfo.signature is empty"));
    }
    Ok((signer, digest_oid.to_vec()))
}

/// The common name of an X.501 Name, as kmod's modinfo picks it: the first commonName attribute; with
/// none, kmod shows the last attribute's value, and so does this.
fn name_common_name(name: &[u8]) -> Result<Option<String>> {
    const WITHIN: &str = "PKCS#7 SignerInfo.sid.issuerAndSerialNumber.issuer";
    let mut rdns = Items::new(name, 7, WITHIN);
    let mut last = None;
    let mut index = 0usize;
    while rdns.peek_tag().is_some() {
        let rdn = rdns.expect(&format!("[{index}]"), TAG_SET)?;
        let mut attributes = Items::new(rdn, 8, format!("{WITHIN}[{index}]"));
        while attributes.peek_tag().is_some() {
            let attribute = attributes.expect("AttributeTypeAndValue", TAG_SEQUENCE)?;
            let mut tv = Items::new(attribute, 9, format!("{WITHIN}[{index}].attribute"));
            let oid = tv.expect("type", TAG_OID)?;
            let value = tv.next("value")?;
            let text = directory_string(value);
            if oid == OID_COMMON_NAME {
                return Ok(Some(text));
            }
            last = Some(text);
        }
        index += 1;
    }
    Ok(last)
}

/// A DirectoryString's text (UTF8String, PrintableString, IA5String as UTF-8; T61String as Latin-1;
/// BMPString as UTF-16; anything else lossily).
fn directory_string(value: Tlv<'_>) -> String {
    match value.tag {
        // T61String: Latin-1 is what every real certificate means by it.
        0x14 => value.value.iter().map(|&b| char::from(b)).collect(),
        // BMPString: UTF-16 big-endian.
        0x1e => char::decode_utf16(value.value.chunks(2).map(|c| {
            u16::from_be_bytes([
                c.first().copied().unwrap_or(0),
                c.get(1).copied().unwrap_or(0),
            ])
        }))
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect(),
        _ => String::from_utf8_lossy(value.value).into_owned(),
    }
}

/// A digest OID's name as the kernel and kmod call it; the dotted OID when unknown.
fn hash_algo_name(oid: &[u8]) -> String {
    const NIST_HASH: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02];
    let name = match oid {
        [0x2b, 0x0e, 0x03, 0x02, 0x1a] => Some("sha1"),
        [0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x83, 0x11] => Some("sm3"),
        [prefix @ .., last] if prefix == NIST_HASH => match last {
            0x01 => Some("sha256"),
            0x02 => Some("sha384"),
            0x03 => Some("sha512"),
            0x04 => Some("sha224"),
            0x08 => Some("sha3-256"),
            0x09 => Some("sha3-384"),
            0x0a => Some("sha3-512"),
            _ => None,
        },
        _ => None,
    };
    name.map_or_else(|| oid_text(oid), str::to_owned)
}

/// The dotted form of an OID's contents (`1.2.840...`); malformed encodings are shown as hex.
fn oid_text(oid: &[u8]) -> String {
    let mut arcs: Vec<u128> = Vec::new();
    let mut current: u128 = 0;
    let mut pending = false;
    for &byte in oid {
        if current > (u128::MAX >> 7) {
            return format!("OID 0x{}", hex_lower(oid));
        }
        current = (current << 7) | u128::from(byte & 0x7f);
        pending = true;
        if byte & 0x80 == 0 {
            arcs.push(current);
            current = 0;
            pending = false;
        }
    }
    let Some((&first, rest)) = arcs.split_first() else {
        return "(empty OID)".to_owned();
    };
    if pending {
        return format!("OID 0x{}", hex_lower(oid));
    }
    let (a, b) = match first {
        0..=39 => (0, first),
        40..=79 => (1, first - 40),
        _ => (2, first - 80),
    };
    let mut text = format!("{a}.{b}");
    for arc in rest {
        text.push_str(&format!(".{arc}"));
    }
    text
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// DER element with a definite length.
    pub(crate) fn der(tag: u8, value: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = value.len();
        if len < 0x80 {
            out.push(len as u8);
        } else if len < 0x100 {
            out.extend_from_slice(&[0x81, len as u8]);
        } else {
            out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]);
        }
        out.extend_from_slice(value);
        out
    }

    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }

    const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
    const SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];

    /// The sid of a SignerInfo.
    pub(crate) enum Sid<'a> {
        /// Issuer name attributes (OID contents, UTF8String value) and the serial's INTEGER contents.
        IssuerSerial(Vec<(&'a [u8], &'a str)>, &'a [u8]),
        Skid(&'a [u8]),
    }

    /// A CMS SignedData laid out as `sign-file` (and `openssl cms -sign -noattr -nocerts`) lays it out.
    pub(crate) fn pkcs7(sid: &Sid<'_>, digest: &[u8]) -> Vec<u8> {
        let algorithm = |oid: &[u8], null: bool| {
            let mut v = der(TAG_OID, oid);
            if null {
                v.extend(der(0x05, &[]));
            }
            der(TAG_SEQUENCE, &v)
        };
        let (version, sid) = match sid {
            Sid::IssuerSerial(attributes, serial) => {
                let rdns: Vec<u8> = attributes
                    .iter()
                    .flat_map(|(oid, value)| {
                        der(
                            TAG_SET,
                            &der(
                                TAG_SEQUENCE,
                                &cat(&[der(TAG_OID, oid), der(0x0c, value.as_bytes())]),
                            ),
                        )
                    })
                    .collect();
                (
                    1u8,
                    der(
                        TAG_SEQUENCE,
                        &cat(&[der(TAG_SEQUENCE, &rdns), der(TAG_INTEGER, serial)]),
                    ),
                )
            }
            Sid::Skid(skid) => (3u8, der(TAG_CONTEXT_0_PRIMITIVE, skid)),
        };
        let signer_info = der(
            TAG_SEQUENCE,
            &cat(&[
                der(TAG_INTEGER, &[version]),
                sid,
                algorithm(digest, false),
                algorithm(RSA, true),
                der(TAG_OCTET_STRING, &[0x5a; 256]),
            ]),
        );
        let signed_data = der(
            TAG_SEQUENCE,
            &cat(&[
                der(TAG_INTEGER, &[version]),
                der(TAG_SET, &algorithm(digest, false)),
                der(TAG_SEQUENCE, &der(TAG_OID, DATA)),
                der(TAG_SET, &signer_info),
            ]),
        );
        der(
            TAG_SEQUENCE,
            &cat(&[
                der(TAG_OID, OID_SIGNED_DATA),
                der(TAG_CONTEXT_0, &signed_data),
            ]),
        )
    }

    /// `image` with `pkcs7` appended as sign-file appends it.
    pub(crate) fn append_signature(image: &[u8], pkcs7: &[u8]) -> Vec<u8> {
        let mut out = image.to_vec();
        out.extend_from_slice(pkcs7);
        out.extend_from_slice(&[0, 0, PKEY_ID_PKCS7, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&(pkcs7.len() as u32).to_be_bytes());
        out.extend_from_slice(MODULE_SIG_MAGIC);
        out
    }

    pub(crate) const CN: &[u8] = &[0x55, 0x04, 0x03];
    pub(crate) const O: &[u8] = &[0x55, 0x04, 0x0a];

    /// A module image signed by issuer `cn` and serial `serial` with SHA-256.
    pub(crate) fn signed_by(image: &[u8], cn: &str, serial: &[u8]) -> Vec<u8> {
        append_signature(
            image,
            &pkcs7(
                &Sid::IssuerSerial(vec![(O, "Example Org"), (CN, cn)], serial),
                SHA256,
            ),
        )
    }

    /// A module image signed by the key with subject key identifier `skid` with SHA-256.
    pub(crate) fn signed_by_skid(image: &[u8], skid: &[u8]) -> Vec<u8> {
        append_signature(image, &pkcs7(&Sid::Skid(skid), SHA256))
    }

    const ELF: &[u8] = b"\x7fELF fake module image";

    fn valid() -> Vec<u8> {
        signed_by(
            ELF,
            "build-service module signing",
            &[0x00, 0x9c, 0x01, 0x02],
        )
    }

    #[test]
    fn issuer_and_serial_name_the_cn_and_the_serial_like_modinfo() {
        let sig = read_module_signature(&valid())
            .expect("valid")
            .expect("signed");
        assert_eq!(sig.signer_name(), Some("build-service module signing"));
        // The INTEGER's leading 00 (sign padding) is not part of the key id, as in modinfo.
        assert_eq!(sig.key_id_text(), "9C:01:02");
        assert_eq!(sig.key_id_kind(), "serial");
        assert_eq!(sig.hash_algo, "sha256");
        assert_eq!(
            sig.to_string(),
            "\"build-service module signing\" (key serial 9C:01:02, sha256)"
        );
    }

    #[test]
    fn a_subject_key_identifier_and_sha512_are_read() {
        let skid: Vec<u8> = (1..=20).collect();
        let image = append_signature(ELF, &pkcs7(&Sid::Skid(&skid), SHA512));
        let sig = read_module_signature(&image)
            .expect("valid")
            .expect("signed");
        assert_eq!(sig.signer_name(), None);
        assert_eq!(sig.key_id(), &skid[..]);
        assert_eq!(
            sig.key_id_text(),
            "01:02:03:04:05:06:07:08:09:0A:0B:0C:0D:0E:0F:10:11:12:13:14"
        );
        assert_eq!(sig.key_id_kind(), "SKID");
        assert_eq!(sig.hash_algo, "sha512");
    }

    #[test]
    fn an_unsigned_image_has_no_signature() {
        assert_eq!(read_module_signature(ELF).expect("fine"), None);
        assert_eq!(read_module_signature(b"").expect("fine"), None);
    }

    #[test]
    fn an_issuer_without_cn_shows_its_last_attribute_and_unknown_digests_their_oid() {
        let image = append_signature(
            ELF,
            &pkcs7(
                &Sid::IssuerSerial(vec![(O, "Only An Org")], &[7]),
                &[0x2a, 0x03, 0x04],
            ),
        );
        let sig = read_module_signature(&image)
            .expect("valid")
            .expect("signed");
        assert_eq!(sig.signer_name(), Some("Only An Org"));
        assert_eq!(sig.hash_algo, "1.2.3.4");
    }

    #[test]
    fn struct_module_signature_is_checked_like_the_kernel_does() {
        let good = valid();
        let info_at = good.len() - MODULE_SIG_MAGIC.len() - MODULE_SIGNATURE_INFO_LEN;
        let with = |offset: usize, byte: u8| {
            let mut image = good.clone();
            image[info_at + offset] = byte;
            read_module_signature(&image)
                .expect_err("refused")
                .to_string()
        };
        assert!(with(2, 1).contains("id_type is 1, not 2"), "{}", with(2, 1));
        assert!(with(0, 4).contains("algo=4"), "{}", with(0, 4));
        assert!(with(6, 1).contains("pad[1]=1"), "{}", with(6, 1));
        // sig_len larger than what precedes it.
        let mut image = good.clone();
        image[info_at + 8..info_at + 12].copy_from_slice(&u32::MAX.to_be_bytes());
        let err = read_module_signature(&image)
            .expect_err("too long")
            .to_string();
        assert!(err.contains("sig_len is 4294967295"), "{err}");
        let mut image = good.clone();
        image[info_at + 8..info_at + 12].copy_from_slice(&0u32.to_be_bytes());
        let err = read_module_signature(&image).expect_err("zero").to_string();
        assert!(err.contains("sig_len is 0"), "{err}");
        // The marker alone.
        let err = read_module_signature(MODULE_SIG_MAGIC)
            .expect_err("bare marker")
            .to_string();
        assert!(err.contains("only 0 byte(s) precede it"), "{err}");
    }

    #[test]
    fn malformed_pkcs7_is_an_error_naming_the_structure() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (
                der(TAG_SET, &[]),
                "PKCS#7 ContentInfo: expected SEQUENCE, found SET",
            ),
            (
                der(TAG_SEQUENCE, &der(TAG_OID, DATA)),
                "contentType is 1.2.840.113549.1.7.1, not signedData",
            ),
            (
                der(TAG_SEQUENCE, &der(TAG_OID, OID_SIGNED_DATA)),
                "PKCS#7 ContentInfo.content: missing",
            ),
            (vec![0x30, 0x84, 1, 0, 0, 0], "announces 16777216 byte(s)"),
            (vec![0x30, 0x89, 1], "a length of 9 bytes"),
            (
                vec![0x04, 0x80, 0, 0],
                "indefinite length on a primitive OCTET STRING",
            ),
            (vec![0x3f, 0x01, 0], "multi-byte tag"),
        ];
        for (pkcs7, needle) in cases {
            let err = read_module_signature(&append_signature(ELF, &pkcs7))
                .expect_err("malformed")
                .to_string();
            assert!(err.contains(needle), "{needle:?} not in {err:?}");
        }
        // No signer at all.
        let empty_signers = der(
            TAG_SEQUENCE,
            &cat(&[
                der(TAG_OID, OID_SIGNED_DATA),
                der(
                    TAG_CONTEXT_0,
                    &der(
                        TAG_SEQUENCE,
                        &cat(&[
                            der(TAG_INTEGER, &[1]),
                            der(TAG_SET, &[]),
                            der(TAG_SEQUENCE, &der(TAG_OID, DATA)),
                            der(TAG_SET, &[]),
                        ]),
                    ),
                ),
            ]),
        );
        let err = read_module_signature(&append_signature(ELF, &empty_signers))
            .expect_err("no signer")
            .to_string();
        assert!(err.contains("signerInfos is empty"), "{err}");
    }

    #[test]
    fn indefinite_lengths_are_read_as_ber_allows() {
        let definite = pkcs7(
            &Sid::IssuerSerial(vec![(CN, "ber signer")], &[1, 2]),
            SHA256,
        );
        // Re-encode the outer ContentInfo with an indefinite length.
        let (outer, _) = read_tlv(&definite, "test", 0).expect("valid");
        let mut ber = vec![TAG_SEQUENCE, 0x80];
        ber.extend_from_slice(outer.value);
        ber.extend_from_slice(&[0, 0]);
        let sig = read_module_signature(&append_signature(ELF, &ber))
            .expect("valid")
            .expect("signed");
        assert_eq!(sig.signer_name(), Some("ber signer"));
        // Without its end-of-contents it is truncated.
        ber.truncate(ber.len() - 2);
        let err = read_module_signature(&append_signature(ELF, &ber))
            .expect_err("no end")
            .to_string();
        assert!(
            err.contains("end-of-contents") || err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn every_truncation_of_a_signature_is_an_error_never_a_panic() {
        let pkcs7 = pkcs7(&Sid::IssuerSerial(vec![(CN, "x")], &[1]), SHA256);
        for cut in 0..pkcs7.len() {
            let image = append_signature(ELF, &pkcs7[..cut]);
            assert!(
                read_module_signature(&image).is_err(),
                "a PKCS#7 cut to {cut} bytes must be refused"
            );
        }
        // The trailer itself cut short: no longer a signed module.
        let good = valid();
        for cut in 1..MODULE_SIG_MAGIC.len() {
            assert_eq!(read_module_signature(&good[..good.len() - cut]), Ok(None));
        }
    }

    #[test]
    fn oids_print_dotted() {
        assert_eq!(oid_text(OID_SIGNED_DATA), "1.2.840.113549.1.7.2");
        assert_eq!(oid_text(SHA256), "2.16.840.1.101.3.4.2.1");
        assert_eq!(oid_text(&[0x2a, 0x86]), "OID 0x2a86");
        assert_eq!(oid_text(&[]), "(empty OID)");
        assert_eq!(oid_text(&[0xff; 40]), format!("OID 0x{}", "ff".repeat(40)));
    }

    mod fuzz {
        use proptest::prelude::*;

        use super::*;

        /// Valid PKCS#7 messages of both signer forms.
        fn samples() -> [Vec<u8>; 2] {
            let skid: Vec<u8> = (0..20).collect();
            [
                pkcs7(&Sid::Skid(&skid), SHA512),
                pkcs7(
                    &Sid::IssuerSerial(vec![(O, "Org"), (CN, "signer")], &[0, 0x80, 1]),
                    SHA256,
                ),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            /// Random bytes behind a valid trailer: an error or a signature, never a panic.
            #[test]
            fn garbage_never_panics(body in proptest::collection::vec(any::<u8>(), 0..600)) {
                let image = append_signature(ELF, &body);
                let _ = read_module_signature(&image);
                let mut raw = body.clone();
                raw.extend_from_slice(MODULE_SIG_MAGIC);
                let _ = read_module_signature(&raw);
            }

            /// A valid PKCS#7 with bytes flipped, cut or inserted: every outcome is a value.
            #[test]
            fn garbled_signatures_never_panic(
                which in 0usize..2,
                edits in proptest::collection::vec((any::<usize>(), any::<u8>(), 0u8..3), 1..8),
                cut in any::<usize>(),
            ) {
                let [skid, issuer] = samples();
                let mut pkcs7 = if which == 0 { skid } else { issuer };
                for (at, byte, kind) in edits {
                    let at = at % (pkcs7.len() + 1);
                    match kind {
                        0 if at < pkcs7.len() => pkcs7[at] = byte,
                        1 => pkcs7.insert(at, byte),
                        _ if at < pkcs7.len() => { pkcs7.remove(at); }
                        _ => {}
                    }
                }
                pkcs7.truncate(cut % (pkcs7.len() + 1));
                match read_module_signature(&append_signature(ELF, &pkcs7)) {
                    Ok(Some(sig)) => prop_assert!(!sig.key_id_kind().is_empty()),
                    Ok(None) => prop_assert!(false, "the trailer is there"),
                    Err(e) => prop_assert!(!e.to_string().is_empty()),
                }
            }

            /// The struct module_signature with any values.
            #[test]
            fn any_signature_info_never_panics(info in proptest::array::uniform12(any::<u8>()), len in 0usize..64) {
                let mut image = vec![0x41u8; len];
                image.extend_from_slice(&info);
                image.extend_from_slice(MODULE_SIG_MAGIC);
                let _ = read_module_signature(&image);
            }
        }
    }
}
