//! The streamed kernel operations, each drawn by `crate::progress`: a
//! catalog pull (also `vm create`'s when its kernel is missing) and an
//! import of local files.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use banger_proto::kernelcat::v1 as pb;
use banger_proto::kernelcat::v1::kernel_cat_client::KernelCatClient;
use banger_proto::rpc::TracedChannel;
use banger_proto::rpc::progress::{LongEvent, Step};
use tokio::io::AsyncReadExt;

use crate::context::Context;
use crate::progress::{Progress, Unit, Update};

/// Size of the chunks an import streams.
const CHUNK: usize = 1 << 20;

/// Pulls a catalog kernel, drawing its progress (nothing under `--json`).
/// Also used by `vm create`/`vm run` when their kernel is missing.
pub(crate) async fn pull_with_progress(
    ctx: &Context,
    client: &mut KernelCatClient<TracedChannel>,
    name: String,
    force: bool,
    update: bool,
) -> Result<pb::Kernel> {
    let mut stream = client
        .pull_kernel(pb::PullKernelRequest {
            name,
            force,
            update,
        })
        .await?
        .into_inner();
    let mut progress = Progress::new(ctx.json);
    // Ctrl-C drops the stream; the service then cancels the pull and
    // removes what it had downloaded.
    let result = loop {
        let message = tokio::select! {
            m = stream.message() => m,
            _ = tokio::signal::ctrl_c() => {
                progress.abandon("cancelled");
                bail!("pull cancelled; nothing was stored");
            }
        };
        match message {
            Err(status) => {
                progress.abandon("failed");
                return Err(status.into());
            }
            Ok(None) => {
                progress.abandon("failed");
                bail!("the service ended the pull without a result; see its log")
            }
            Ok(Some(event)) => match event.into_step() {
                Some(Step::Update(p)) => progress.update(&p),
                Some(Step::Done(kernel)) => break kernel,
                None => {}
            },
        }
    };
    progress.finish();
    Ok(result)
}

/// The files of a `kernel import`.
pub(super) struct ImportFiles {
    pub vmlinux: PathBuf,
    pub initrd: Option<PathBuf>,
    pub config: Option<PathBuf>,
}

async fn open(path: &Path) -> Result<(tokio::fs::File, u64)> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let meta = file
        .metadata()
        .await
        .with_context(|| format!("cannot stat {}", path.display()))?;
    if !meta.is_file() {
        bail!("{} is not a regular file", path.display());
    }
    Ok((file, meta.len()))
}

/// Streams the files, read with the user's rights, to kernelcat under
/// `header`, drawing how much was sent.
pub(super) async fn import(
    ctx: &Context,
    client: &mut KernelCatClient<TracedChannel>,
    mut header: pb::ImportKernelHeader,
    files: ImportFiles,
) -> Result<pb::Kernel> {
    // Opened here, with the user's own rights: the service never reads a
    // client-named host path.
    let mut parts = Vec::new();
    let (vmlinux, size) = open(&files.vmlinux).await?;
    if size == 0 {
        bail!("{} is empty", files.vmlinux.display());
    }
    header.vmlinux_size = size;
    parts.push((pb::KernelFile::Vmlinux, vmlinux, size));
    if let Some(path) = &files.initrd {
        let (f, size) = open(path).await?;
        header.initrd_size = size;
        if size > 0 {
            parts.push((pb::KernelFile::Initrd, f, size));
        }
    }
    if let Some(path) = &files.config {
        let (f, size) = open(path).await?;
        header.config_size = size;
        if size > 0 {
            parts.push((pb::KernelFile::Config, f, size));
        }
    }
    let total: u64 = parts.iter().map(|p| p.2).sum();
    let mut progress = Progress::new(ctx.json);
    let sent = |done| Update {
        phase: "importing".into(),
        done,
        total,
        unit: Unit::Bytes,
        ..Update::default()
    };
    progress.update(sent(0));
    // The request stream reports each chunk it hands over; drawn here.
    let (tx, mut chunks) = tokio::sync::mpsc::unbounded_channel();
    let first = pb::ImportKernelRequest {
        part: Some(pb::import_kernel_request::Part::Header(header)),
    };
    let call = client.import_kernel(async_stream_of(first, parts, tx));
    tokio::pin!(call);
    let mut done = 0;
    let kernel = loop {
        tokio::select! {
            r = &mut call => break r,
            Some(n) = chunks.recv() => {
                done += n;
                progress.update(sent(done));
            }
        }
    };
    let kernel = match kernel {
        Ok(k) => k.into_inner(),
        Err(status) => {
            progress.abandon("failed");
            return Err(status.into());
        }
    };
    progress.finish();
    Ok(kernel)
}

/// The request stream of an import: the header, then each file in chunks.
/// A read error ends the stream early; the service then reports the size
/// mismatch and stores nothing.
fn async_stream_of(
    first: pb::ImportKernelRequest,
    parts: Vec<(pb::KernelFile, tokio::fs::File, u64)>,
    sent: tokio::sync::mpsc::UnboundedSender<u64>,
) -> impl futures::Stream<Item = pb::ImportKernelRequest> + Send + 'static {
    let state = (
        Some(first),
        parts.into_iter(),
        None::<(pb::KernelFile, tokio::fs::File)>,
        sent,
    );
    futures::stream::unfold(state, |(first, mut parts, mut current, sent)| async move {
        if let Some(first) = first {
            return Some((first, (None, parts, current, sent)));
        }
        loop {
            if current.is_none() {
                let (kind, file, _) = parts.next()?;
                current = Some((kind, file));
            }
            let (kind, file) = current.as_mut()?;
            let mut buf = vec![0u8; CHUNK];
            match file.read(&mut buf).await {
                Ok(0) => current = None,
                Ok(n) => {
                    buf.truncate(n);
                    let _ = sent.send(n as u64);
                    let message = pb::ImportKernelRequest {
                        part: Some(pb::import_kernel_request::Part::Chunk(
                            pb::ImportKernelChunk {
                                file: *kind as i32,
                                data: buf,
                            },
                        )),
                    };
                    return Some((message, (None, parts, current, sent)));
                }
                Err(e) => {
                    eprintln!("banger: read error during import: {e}");
                    return None;
                }
            }
        }
    })
}
