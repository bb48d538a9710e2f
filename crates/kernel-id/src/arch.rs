//! `Arch`: the CPU architectures artifacts are built for, with the names each ecosystem uses for them.

use std::fmt;
use std::str::FromStr;

use crate::error::{Field, IdError};

/// A CPU architecture. Canonical names are the kernel's (`uname -m`): `x86_64` and `aarch64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Arch {
    /// 64-bit x86 (Debian: amd64).
    X86_64,
    /// 64-bit ARM (Debian: arm64).
    Aarch64,
}

impl Arch {
    /// Every supported architecture, in canonical order.
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Aarch64];

    /// Parses the kernel name or the Debian alias: `x86_64`, `amd64`, `aarch64`, `arm64`.
    pub fn parse(raw: &str) -> Result<Self, IdError> {
        match raw {
            "x86_64" | "amd64" => Ok(Arch::X86_64),
            "aarch64" | "arm64" => Ok(Arch::Aarch64),
            _ => Err(IdError::new(
                Field::Architecture,
                format!(
                    "must be one of x86_64, amd64, aarch64, arm64 (got {:?})",
                    truncate(raw)
                ),
            )),
        }
    }

    /// The canonical (kernel, `uname -m`) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Aarch64 => "aarch64",
        }
    }

    /// The Debian architecture name, used in .deb metadata and in every package file name.
    pub fn debian_name(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Aarch64 => "arm64",
        }
    }

    /// The RPM architecture name.
    pub fn rpm_name(self) -> &'static str {
        self.as_str()
    }

    /// The ELF `e_machine` of code for this architecture (the System V gABI registry), which is
    /// how a kernel module says what it was compiled for.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 62,
            Arch::Aarch64 => 183,
        }
    }

    /// The architecture whose ELF `e_machine` is `machine`, if it is one of ours.
    pub fn from_elf_machine(machine: u16) -> Option<Arch> {
        Arch::ALL
            .into_iter()
            .find(|arch| arch.elf_machine() == machine)
    }
}

/// Keeps error messages short when someone sends a 10 KB string.
pub(crate) fn truncate(raw: &str) -> String {
    const LIMIT: usize = 40;
    if raw.len() <= LIMIT {
        return raw.to_owned();
    }
    let mut end = LIMIT;
    while !raw.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &raw[..end])
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Arch {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Arch::parse(s)
    }
}

impl AsRef<str> for Arch {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl serde::Serialize for Arch {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Arch {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Arch::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_map_to_canonical_names() {
        assert_eq!(Arch::parse("amd64").unwrap(), Arch::X86_64);
        assert_eq!(Arch::parse("arm64").unwrap(), Arch::Aarch64);
        assert_eq!(Arch::Aarch64.debian_name(), "arm64");
        assert_eq!(Arch::X86_64.rpm_name(), "x86_64");
    }

    #[test]
    fn elf_machines_round_trip_and_foreign_ones_are_none() {
        // EM_X86_64 = 62 and EM_AARCH64 = 183 in <elf.h>.
        assert_eq!(Arch::X86_64.elf_machine(), 62);
        assert_eq!(Arch::Aarch64.elf_machine(), 183);
        for arch in Arch::ALL {
            assert_eq!(Arch::from_elf_machine(arch.elf_machine()), Some(arch));
        }
        assert_eq!(Arch::from_elf_machine(3), None, "EM_386");
    }
}
