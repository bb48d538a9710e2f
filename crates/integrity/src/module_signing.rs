//! The material of kernel module signing (Secure Boot), as the build-service checks it at start and
//! the builder checks it in the root: the X.509 certificate in DER (what `sign-file` and UEFI `db`
//! take; given as DER or PEM) and the PEM private key `sign-file` reads without a passphrase.

use base64::Engine as _;

/// The DER form of an X.509 certificate given as DER or PEM (its first `CERTIFICATE` block).
pub fn certificate_der(bytes: &[u8]) -> Result<Vec<u8>, String> {
    const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
    const END: &str = "-----END CERTIFICATE-----";
    // DER: a SEQUENCE.
    if bytes.first() == Some(&0x30) {
        return Ok(bytes.to_vec());
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "is neither a DER nor a PEM certificate".to_owned())?;
    let start = text
        .find(BEGIN)
        .ok_or_else(|| format!("is neither a DER certificate nor PEM with a {BEGIN} line"))?
        + BEGIN.len();
    let length = text[start..]
        .find(END)
        .ok_or_else(|| format!("PEM certificate without its {END} line"))?;
    let body: String = text[start..start + length]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|error| format!("the PEM certificate's body is not base64: {error}"))?;
    if der.first() != Some(&0x30) {
        return Err("the PEM certificate's body is not DER".to_owned());
    }
    Ok(der)
}

/// Checks that `pem` is a private key `sign-file` can read unattended: PEM, not encrypted. The key
/// itself is parsed by whoever uses it (openssl, sign-file).
pub fn check_private_key_pem(pem: &[u8]) -> Result<(), String> {
    let text = std::str::from_utf8(pem).map_err(|_| {
        "is not a PEM private key (sign-file reads only PEM: `openssl pkey -in KEY -out KEY.pem`)"
            .to_owned()
    })?;
    if text.contains("ENCRYPTED") {
        return Err(
            "is an encrypted private key; sign-file runs unattended and takes no passphrase: \
             give an unencrypted PEM key (mode 0600)"
                .to_owned(),
        );
    }
    let begins = text.lines().any(|line| {
        line.starts_with("-----BEGIN ") && line.trim_end().ends_with("PRIVATE KEY-----")
    });
    if !begins {
        return Err(
            "is not a PEM private key (no -----BEGIN ... PRIVATE KEY----- line)".to_owned(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_come_as_der_or_pem_and_keys_as_unencrypted_pem() {
        let der = vec![0x30, 0x03, 0x02, 0x01, 0x01];
        assert_eq!(certificate_der(&der).unwrap(), der);
        let pem = format!(
            "junk\n-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            base64::engine::general_purpose::STANDARD.encode(&der)
        );
        assert_eq!(certificate_der(pem.as_bytes()).unwrap(), der);
        assert!(
            certificate_der(b"-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----\n")
                .is_err()
        );
        assert!(certificate_der(b"plain text").is_err());

        assert!(
            check_private_key_pem(
                b"-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n"
            )
            .is_ok()
        );
        assert!(check_private_key_pem(b"-----BEGIN RSA PRIVATE KEY-----\nAA==\n").is_ok());
        let encrypted =
            check_private_key_pem(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n").unwrap_err();
        assert!(encrypted.contains("encrypted"), "{encrypted}");
        assert!(check_private_key_pem(b"-----BEGIN CERTIFICATE-----\n").is_err());
        assert!(check_private_key_pem(&[0xff, 0xfe]).is_err());
    }
}
