//! The one home for driver package formats: the builder writes a driver's kernel modules into a
//! `.deb` or `.rpm` ([`write_package`], [`PackageSpec::for_driver`]), and the loader reads packages
//! back ([`list`], [`extract`], [`decompress_module_file`], [`read_metadata`]).
//!
//! Reading is streaming (no package or payload is ever held in memory) and defensive: absolute paths,
//! `..`, links leaving the target, device nodes, oversize entries, decompression bombs, duplicates,
//! truncation and compression mismatches are refused with a [`ReadError`] naming the entry and rule,
//! and a refused package leaves nothing on disk.

mod compression;
mod deb_read;
mod error;
mod extract;
mod io_util;
mod metadata;
mod read;
mod rpm_read;
mod spec;
mod write;
mod xz_blocks;

pub use compression::{
    Compression, decompress_module, decompress_module_file, is_kernel_module_name,
    module_compression_from_name, module_image,
};
pub use error::{ReadError, Refusal, Rule, SpecError, WriteError};
pub use extract::{
    EntryInfo, EntryKind, ExtractOptions, ExtractReport, Limits, PackagedModule, Selection,
};
pub use kernel_id::PackageFormat;
pub use metadata::{
    MAX_CONTROL_FILE_BYTES, MAX_CONTROL_TAR_BYTES, PackageMetadata, control_field, read_metadata,
};
pub use read::{detect_format, extract, list, read_kernel_modules};
pub use spec::{
    DEB_SOURCE_COMMIT_FIELD, DEFAULT_LICENSE, DEFAULT_MAINTAINER, DEFAULT_SOURCE_DATE_EPOCH,
    FileContent, PackageFile, PackageSpec,
};
pub use write::{
    RPM_RELEASE, WriteOptions, write_deb, write_package, write_package_file, write_rpm,
};
