//! Typed errors: [`SpecError`] for an invalid package description, [`WriteError`] for failures while
//! writing a package, and [`ReadError`] for reading, where a [`Refusal`] names the hostile entry and the
//! rule it broke.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// A field of [`crate::PackageSpec`] that breaks a rule.
#[derive(Debug, thiserror::Error)]
#[error("{field}: {rule}")]
pub struct SpecError {
    /// The spec field, e.g. `name` or `files[0].install_path`.
    pub field: String,
    /// The rule that was broken, with the offending value.
    pub rule: String,
}

impl SpecError {
    pub(crate) fn new(field: impl Into<String>, rule: impl Into<String>) -> Self {
        SpecError {
            field: field.into(),
            rule: rule.into(),
        }
    }
}

/// Writing a package failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The spec is invalid; nothing was written.
    #[error("invalid package spec: {0}")]
    Spec(#[from] SpecError),
    /// Reading a file's source or writing the output failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file being read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The rpm crate refused to build the package.
    #[error("building the rpm failed: {0}")]
    Rpm(#[from] rpm::Error),
}

impl WriteError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        WriteError::Io {
            path: path.into(),
            source,
        }
    }
}

/// The safety rule an archive entry broke. Every refusal stops the whole extraction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rule {
    /// The entry's path is absolute (`/etc/passwd`).
    AbsolutePath,
    /// The entry's path has a `..` component.
    ParentComponent,
    /// The entry's path is empty or otherwise unusable.
    InvalidPath,
    /// A symlink whose target resolves outside the extraction root.
    SymlinkEscapes {
        /// The link's target as stored in the archive.
        target: PathBuf,
    },
    /// A hardlink whose target is outside the extraction root.
    HardlinkEscapes {
        /// The link's target as stored in the archive.
        target: PathBuf,
    },
    /// A hardlink whose target is not a regular file extracted earlier.
    HardlinkTargetMissing {
        /// The link's target, relative to the root.
        target: PathBuf,
    },
    /// A device node, fifo, socket or unknown entry type.
    SpecialFile {
        /// What kind of special file.
        kind: String,
    },
    /// The entry is larger than the per-entry limit.
    EntryTooLarge {
        /// The declared or observed size.
        size: u64,
        /// The configured limit.
        limit: u64,
    },
    /// Extracting the entry would pass the total-bytes limit.
    TotalTooLarge {
        /// The configured limit.
        limit: u64,
    },
    /// The archive has more entries than allowed.
    TooManyEntries {
        /// The configured limit.
        limit: u64,
    },
    /// The data expands more than the configured ratio over the compressed input (decompression bomb).
    ExpansionRatio {
        /// Uncompressed bytes produced so far.
        expanded: u64,
        /// Compressed bytes read so far.
        compressed: u64,
        /// The configured maximum ratio.
        limit: u64,
    },
    /// The same path appears twice.
    Duplicate,
    /// A parent of the entry is a symlink or a file, so writing it would follow a link.
    ParentNotDirectory {
        /// The offending ancestor, relative to the root.
        ancestor: PathBuf,
    },
    /// A symlink chain too long to resolve safely (or a loop).
    SymlinkLoop,
    /// The entry holds fewer or more bytes than its header declares.
    SizeMismatch {
        /// Bytes declared by the header.
        declared: u64,
        /// Bytes found.
        found: u64,
    },
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::AbsolutePath => f.write_str("absolute paths are not allowed"),
            Rule::ParentComponent => f.write_str("'..' path components are not allowed"),
            Rule::InvalidPath => f.write_str("the path is empty or not usable"),
            Rule::SymlinkEscapes { target } => {
                write!(
                    f,
                    "symlink target '{}' resolves outside the target directory",
                    target.display()
                )
            }
            Rule::HardlinkEscapes { target } => {
                write!(
                    f,
                    "hardlink target '{}' is outside the target directory",
                    target.display()
                )
            }
            Rule::HardlinkTargetMissing { target } => write!(
                f,
                "hardlink target '{}' is not a regular file extracted from this archive",
                target.display()
            ),
            Rule::SpecialFile { kind } => write!(f, "{kind} entries are not allowed"),
            Rule::EntryTooLarge { size, limit } => {
                write!(
                    f,
                    "entry size {size} bytes exceeds the per-entry limit of {limit} bytes"
                )
            }
            Rule::TotalTooLarge { limit } => {
                write!(
                    f,
                    "extracted data would exceed the total limit of {limit} bytes"
                )
            }
            Rule::TooManyEntries { limit } => write!(f, "archive has more than {limit} entries"),
            Rule::ExpansionRatio {
                expanded,
                compressed,
                limit,
            } => write!(
                f,
                "{compressed} compressed bytes expanded to {expanded} bytes, over the {limit}:1 ratio limit"
            ),
            Rule::Duplicate => f.write_str("the path appears more than once in the archive"),
            Rule::ParentNotDirectory { ancestor } => write!(
                f,
                "parent '{}' is not a directory (writing through links is not allowed)",
                ancestor.display()
            ),
            Rule::SymlinkLoop => f.write_str("symlink chain is too long or loops"),
            Rule::SizeMismatch { declared, found } => {
                write!(f, "entry declares {declared} bytes but holds {found}")
            }
        }
    }
}

/// A refused archive entry: which entry and which rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The entry's path as stored in the archive.
    pub entry: String,
    /// The rule it broke.
    pub rule: Rule,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "entry '{}' refused: {}", self.entry, self.rule)
    }
}

/// Reading or extracting a package failed. Nothing is left in the target directory when extraction
/// fails.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// An IO error on a named path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path being read or written.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The file is neither a .deb nor an .rpm.
    #[error("not a .deb or .rpm package (starts with {magic:02x?})")]
    NotAPackage {
        /// The first bytes found.
        magic: Vec<u8>,
    },
    /// The package structure is wrong (missing member, bad header, bad tar).
    #[error("malformed package: {what}")]
    Malformed {
        /// What is wrong.
        what: String,
    },
    /// The package or one of its streams ends early.
    #[error("truncated package: {what}")]
    Truncated {
        /// Where the data ran out.
        what: String,
    },
    /// A compressed stream does not decode.
    #[error("corrupt compressed data in {member}: {source}")]
    Corrupt {
        /// The member or stream.
        member: String,
        /// The decoder's error.
        #[source]
        source: io::Error,
    },
    /// The compression announced by a name or header differs from the bytes.
    #[error("{member}: declared compression {declared} but the data is {detected}")]
    CompressionMismatch {
        /// The member, payload or module.
        member: String,
        /// What the name or header says.
        declared: String,
        /// What the magic bytes say.
        detected: String,
    },
    /// A compression this crate does not decode.
    #[error("{member}: unsupported compression {format}")]
    UnsupportedCompression {
        /// The member or payload.
        member: String,
        /// The compression's name.
        format: String,
    },
    /// An entry broke a safety rule.
    #[error("{0}")]
    Refused(Refusal),
    /// The extraction target exists and is not an empty directory.
    #[error("{}: target exists and is not an empty directory", path.display())]
    TargetNotEmpty {
        /// The target.
        path: PathBuf,
    },
    /// The rpm crate could not parse the package headers.
    #[error("rpm: {0}")]
    Rpm(#[from] rpm::Error),
    /// The name is not a kernel module (`.ko`, `.ko.gz`, `.ko.xz`, `.ko.zst`).
    #[error("{name}: not a kernel module file name (.ko, .ko.gz, .ko.xz, .ko.zst)")]
    NotAModule {
        /// The file name.
        name: String,
    },
    /// The decompressed module is larger than allowed.
    #[error("{name}: decompressed module exceeds the limit of {limit} bytes")]
    ModuleTooLarge {
        /// The module's file name.
        name: String,
        /// The limit.
        limit: u64,
    },
    /// The decompressed module is not an ELF object.
    #[error("{name}: decompressed module is not an ELF object")]
    NotElf {
        /// The module's file name.
        name: String,
    },
}

impl ReadError {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        ReadError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    /// Classifies a stream error: running out of data is truncation, anything else is corruption.
    pub(crate) fn corrupt(member: &str, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            ReadError::Truncated {
                what: format!("{member}: {source}"),
            }
        } else {
            ReadError::Corrupt {
                member: member.to_owned(),
                source,
            }
        }
    }

    pub(crate) fn refused(entry: impl Into<String>, rule: Rule) -> Self {
        ReadError::Refused(Refusal {
            entry: entry.into(),
            rule,
        })
    }

    pub(crate) fn malformed(what: impl Into<String>) -> Self {
        ReadError::Malformed { what: what.into() }
    }

    /// Replaces the path of an IO error with a better one (the module's full path).
    pub(crate) fn with_io_path(self, path: &Path) -> Self {
        match self {
            ReadError::Io { source, .. } => ReadError::io(path, source),
            other => other,
        }
    }

    /// The refusal, when an entry broke a safety rule.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            ReadError::Refused(refusal) => Some(refusal),
            _ => None,
        }
    }
}
