//! `add-kernel`: idempotently inserts one kernel into kernels.json, under a file lock and replaced
//! atomically. The implementation is shared with the repository watcher, which grows the same file
//! after its prebuild requests: it lives in `repo_watch::kernels_json`.

pub use repo_watch::kernels_json::{AddKernelError, Added, add_kernel};
