//! The streamed image operations, each drawn by `crate::progress`: pull
//! (also `vm run`'s), import of a local archive, and vmm's preparation.

use std::path::Path;

use anyhow::{Context as _, Result};
use banger_proto::config::Service;
use banger_proto::imagestore::v1 as pb;
use banger_proto::imagestore::v1::image_store_client::ImageStoreClient;
use banger_proto::rpc::progress::{LongEvent, Step};
use banger_proto::vmm::v1 as vmm;
use banger_proto::vmm::v1::vmm_client::VmmClient;

use crate::context::Context;
use crate::progress::Progress;

/// Runs a pull, drawing its progress (nothing under `--json`); the image
/// store's record of the image.
pub(crate) async fn pull_with_progress(
    ctx: &Context,
    client: &mut ImageStoreClient<banger_proto::rpc::TracedChannel>,
    request: pb::PullImageRequest,
) -> Result<pb::Image> {
    let stream = client.pull_image(request).await?.into_inner();
    follow(ctx, stream).await
}

/// Streams `file` (read with the user's rights, in 1 MiB chunks) to the
/// image store under `header`, drawing the store's progress.
pub(super) async fn import(
    ctx: &Context,
    client: &mut ImageStoreClient<banger_proto::rpc::TracedChannel>,
    mut header: pb::ImportImageHeader,
    file: &Path,
) -> Result<pb::Image> {
    let f = tokio::fs::File::open(file)
        .await
        .with_context(|| format!("cannot open {}", file.display()))?;
    header.size_bytes = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    header.file_name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let header = pb::ImportImageRequest {
        part: Some(pb::import_image_request::Part::Header(header)),
    };
    let chunks = futures::stream::unfold(f, |mut f| async move {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; 1 << 20];
        match f.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((
                    pb::ImportImageRequest {
                        part: Some(pb::import_image_request::Part::Chunk(buf)),
                    },
                    f,
                ))
            }
            Err(e) => {
                eprintln!("banger: reading the archive failed: {e}");
                None
            }
        }
    });
    let stream = futures::StreamExt::chain(futures::stream::iter([header]), chunks);
    let events = client.import_image(stream).await?.into_inner();
    follow(ctx, events).await
}

/// vmm's preparation of an image, drawing its steps.
pub(super) async fn prepare(
    ctx: &Context,
    request: vmm::PrepareImageRequest,
) -> Result<vmm::PreparedImage> {
    let mut client = VmmClient::new(ctx.channel(Service::Vmm).await?);
    let mut stream = client.prepare_image(request).await?.into_inner();
    let mut progress = Progress::new(ctx.json);
    let mut done = None;
    let result = async {
        while let Some(ev) = stream.message().await? {
            match ev.into_step() {
                Some(Step::Update(p)) => progress.update(&p),
                Some(Step::Done(p)) => done = Some(p),
                None => {}
            }
        }
        anyhow::Ok(())
    }
    .await;
    match &result {
        Ok(()) => progress.finish(),
        Err(_) => progress.abandon("failed"),
    }
    result?;
    done.context("vmm ended the preparation without a result")
}

/// Draws the progress events of a pull or import until its image arrives.
async fn follow(
    ctx: &Context,
    mut stream: tonic::Streaming<pb::PullImageEvent>,
) -> Result<pb::Image> {
    let mut progress = Progress::new(ctx.json);
    let result = async {
        while let Some(event) = stream.message().await? {
            match event.into_step() {
                Some(Step::Update(p)) => progress.update(&p),
                Some(Step::Done(image)) => return Ok(image),
                None => {}
            }
        }
        anyhow::bail!("the image store ended the pull without a result; see its log")
    }
    .await;
    match &result {
        Ok(_) => progress.finish(),
        Err(_) => progress.abandon("failed"),
    }
    result
}
