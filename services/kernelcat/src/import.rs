//! Imports: the client streams the files (read with the user's own rights)
//! after a header announcing their sizes; every size is checked, the kernel
//! is inspected for its release and architecture when not given, and it is
//! stored like a pull (staging dir, manifest, rename).

use std::sync::Arc;

use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, Result};
use crate::store::{self, Manifest, Store, StoredKernel};

/// Which file a chunk belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportFile {
    /// The uncompressed kernel.
    Vmlinux,
    /// The initrd.
    Initrd,
    /// The kernel build configuration.
    Config,
}

impl ImportFile {
    fn file_name(self) -> &'static str {
        match self {
            ImportFile::Vmlinux => store::VMLINUX,
            ImportFile::Initrd => store::INITRD,
            ImportFile::Config => store::CONFIG,
        }
    }
}

/// The first message of an import.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportHeader {
    /// Kernel name.
    pub name: String,
    /// Distribution; `custom` when empty.
    pub distro: String,
    /// Architecture; from the ELF header when empty.
    pub arch: String,
    /// Release; from the `Linux version` banner when empty.
    pub kernel_version: String,
    /// Replace an existing kernel.
    pub force: bool,
    /// Bytes of vmlinux (required, > 0).
    pub vmlinux_size: u64,
    /// Bytes of initrd, 0 if none.
    pub initrd_size: u64,
    /// Bytes of config, 0 if none.
    pub config_size: u64,
}

fn bad(reason: impl Into<String>) -> Error {
    Error::BadImport {
        reason: reason.into(),
    }
}

/// Stores the kernel whose files arrive on `chunks`, in file order
/// (vmlinux, initrd, config; absent ones skipped).
#[tracing::instrument(skip_all, fields(kernel = %header.name))]
pub async fn import(
    store: &Arc<Store>,
    max_bytes: u64,
    header: ImportHeader,
    mut chunks: impl Stream<Item = Result<(ImportFile, bytes::Bytes)>> + Unpin,
) -> Result<StoredKernel> {
    store::validate_name(&header.name)?;
    if header.vmlinux_size == 0 {
        return Err(bad("the header must announce a non-empty vmlinux"));
    }
    let total = header
        .vmlinux_size
        .saturating_add(header.initrd_size)
        .saturating_add(header.config_size);
    if total > max_bytes {
        return Err(Error::TooLarge {
            what: format!("the import of {} ({total} bytes)", header.name),
            limit: max_bytes,
        });
    }
    store.check_replaceable(&header.name, header.force)?;
    let staging = store.stage(&header.name)?;
    let plan: Vec<(ImportFile, u64)> = [
        (ImportFile::Vmlinux, header.vmlinux_size),
        (ImportFile::Initrd, header.initrd_size),
        (ImportFile::Config, header.config_size),
    ]
    .into_iter()
    .filter(|(_, size)| *size > 0)
    .collect();
    let mut index = 0;
    let mut written = 0u64;
    let mut out: Option<tokio::io::BufWriter<tokio::fs::File>> = None;
    while let Some(chunk) = chunks.next().await {
        let (file, data) = chunk?;
        // Move on to the next file once the current one is complete.
        while index < plan.len() && written == plan[index].1 {
            finish(&mut out, staging.path()).await?;
            index += 1;
            written = 0;
        }
        let Some(&(expected_file, size)) = plan.get(index) else {
            return Err(bad(format!(
                "more data than announced (a {file:?} chunk after all files were complete)"
            )));
        };
        if file != expected_file {
            return Err(bad(format!(
                "got a {file:?} chunk while {expected_file:?} is incomplete ({written} of \
                 {size} bytes); send files whole, in the order vmlinux, initrd, config"
            )));
        }
        if written + data.len() as u64 > size {
            return Err(bad(format!(
                "{file:?} is larger than the {size} bytes announced"
            )));
        }
        if out.is_none() {
            let path = staging.path().join(file.file_name());
            let f = tokio::fs::File::create(&path)
                .await
                .map_err(Error::io("cannot create", &path))?;
            out = Some(tokio::io::BufWriter::with_capacity(1 << 20, f));
        }
        if let Some(w) = out.as_mut() {
            w.write_all(&data)
                .await
                .map_err(Error::io("cannot write in", staging.path()))?;
        }
        written += data.len() as u64;
    }
    finish(&mut out, staging.path()).await?;
    while index < plan.len() && written == plan[index].1 {
        index += 1;
        written = 0;
    }
    if let Some((file, size)) = plan.get(index) {
        return Err(bad(format!(
            "the stream ended after {written} of the {size} bytes announced for {file:?}"
        )));
    }
    let vmlinux = staging.path().join(store::VMLINUX);
    let (staging, inspected) = tokio::task::spawn_blocking(move || {
        let result = store::hash_file(&vmlinux)
            .and_then(|(sha, size)| Ok((sha, size, store::inspect_vmlinux(&vmlinux)?)));
        (staging, result)
    })
    .await
    .map_err(|e| Error::Internal(format!("hash task failed: {e}")))?;
    let (sha, size, info) = inspected?;
    let kernel_version = match (header.kernel_version.is_empty(), info.version) {
        (false, _) => header.kernel_version.clone(),
        (true, Some(v)) => v,
        (true, None) => {
            return Err(bad(
                "no `Linux version` banner found in vmlinux (is it an uncompressed kernel?); \
                 pass --version to import it anyway",
            ));
        }
    };
    let manifest = Manifest {
        name: header.name.clone(),
        distro: if header.distro.is_empty() {
            "custom".into()
        } else {
            header.distro.clone()
        },
        arch: if header.arch.is_empty() {
            info.arch
                .unwrap_or_else(|| std::env::consts::ARCH.to_owned())
        } else {
            header.arch.clone()
        },
        kernel_version,
        vmlinux_sha256: sha,
        vmlinux_size: size,
        has_initrd: header.initrd_size > 0,
        has_config: header.config_size > 0,
        source: "import".into(),
        created_unix: store::now_unix(),
        holders: Default::default(),
        debian: None,
    };
    let kernel = store.commit(staging, &manifest, header.force)?;
    tracing::info!(kernel = %header.name, sha256 = %manifest.vmlinux_sha256, "kernel imported");
    Ok(kernel)
}

async fn finish(
    out: &mut Option<tokio::io::BufWriter<tokio::fs::File>>,
    dir: &std::path::Path,
) -> Result<()> {
    if let Some(mut w) = out.take() {
        w.flush().await.map_err(Error::io("cannot write in", dir))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(name: &str, vmlinux: u64, config: u64) -> ImportHeader {
        ImportHeader {
            name: name.into(),
            kernel_version: "1.2.3".into(),
            vmlinux_size: vmlinux,
            config_size: config,
            ..Default::default()
        }
    }

    fn chunks(
        parts: Vec<(ImportFile, &'static [u8])>,
    ) -> impl Stream<Item = Result<(ImportFile, bytes::Bytes)>> + Unpin {
        futures::stream::iter(
            parts
                .into_iter()
                .map(|(f, d)| Ok((f, bytes::Bytes::from_static(d)))),
        )
    }

    async fn setup() -> (tempfile::TempDir, Arc<Store>) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("kernels")).unwrap());
        (dir, store)
    }

    fn leftovers(store: &Store) -> usize {
        std::fs::read_dir(store.root())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name() != ".lock")
            .count()
    }

    #[tokio::test]
    async fn imports_in_order_with_sizes_checked() {
        use ImportFile::*;
        let (_d, store) = setup().await;
        let k = import(
            &store,
            1 << 20,
            header("k", 6, 3),
            chunks(vec![(Vmlinux, b"abc"), (Vmlinux, b"def"), (Config, b"C=y")]),
        )
        .await
        .unwrap();
        assert_eq!(std::fs::read(k.vmlinux_path()).unwrap(), b"abcdef");
        assert_eq!(std::fs::read(k.dir.join("config")).unwrap(), b"C=y");
        assert_eq!(k.manifest.source, "import");
        assert_eq!(k.manifest.distro, "custom");
        assert!(k.manifest.has_config && !k.manifest.has_initrd);
    }

    #[tokio::test]
    async fn protocol_violations_leave_nothing() {
        use ImportFile::*;
        let (_d, store) = setup().await;
        type Case = (ImportHeader, Vec<(ImportFile, &'static [u8])>, &'static str);
        let cases: Vec<Case> = vec![
            (
                header("k", 6, 0),
                vec![(Vmlinux, b"abc")],
                "ended after 3 of the 6",
            ),
            (header("k", 2, 0), vec![(Vmlinux, b"abc")], "larger than"),
            (
                header("k", 3, 3),
                vec![(Config, b"abc")],
                "while Vmlinux is incomplete",
            ),
            (
                header("k", 3, 0),
                vec![(Vmlinux, b"abc"), (Initrd, b"x")],
                "more data",
            ),
            (header("k", 0, 0), vec![], "non-empty vmlinux"),
        ];
        for (h, parts, want) in cases {
            let err = import(&store, 1 << 20, h, chunks(parts)).await.unwrap_err();
            assert!(err.to_string().contains(want), "{err} !~ {want}");
            assert_eq!(leftovers(&store), 0);
        }
        let err = import(&store, 4, header("k", 6, 0), chunks(vec![]))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::TooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn version_is_required_when_undetectable() {
        use ImportFile::*;
        let (_d, store) = setup().await;
        let mut h = header("k", 3, 0);
        h.kernel_version.clear();
        let err = import(&store, 1 << 20, h, chunks(vec![(Vmlinux, b"abc")]))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("--version"), "{err}");
        assert_eq!(leftovers(&store), 0);
    }
}
