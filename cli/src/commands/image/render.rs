//! What `banger image …` prints: [`ImageView`] (the table, one image,
//! `--json`), [`PreparedView`] and [`PruneView`], per the rule in
//! `crate::output`.

use std::collections::HashMap;

use anyhow::Result;
use banger_proto::imagestore::v1 as pb;
use banger_proto::vmm::v1 as vmm;
use serde::Serialize;

use crate::context::Context;
use crate::output;

/// An image as `--json` prints it.
#[derive(Debug, Serialize)]
pub(super) struct ImageView {
    name: String,
    reference: String,
    digest: String,
    platform: String,
    size_bytes: u64,
    content_bytes: u64,
    created_unix: i64,
    default_kernel: String,
    direct_boot: bool,
    guest: GuestView,
    holders: Vec<String>,
    layers: Vec<String>,
    /// `https://host`, `http://host` (plain HTTP) or `import`.
    fetched_from: String,
    plain_http: bool,
    /// Whether VMs of the image need a prepared filesystem.
    needs_preparation: bool,
    /// vmm's preparation of this digest, if any (done or failed).
    #[serde(skip_serializing_if = "Option::is_none")]
    preparation: Option<PreparedView>,
}

/// vmm's preparation of an image digest, as `--json` prints it.
#[derive(Debug, Serialize, Default, Clone)]
pub(super) struct PreparedView {
    prepared: bool,
    packages: Vec<String>,
    finished_unix: i64,
    seconds: f64,
    has_systemd: bool,
    has_ssh_server: bool,
    size_bytes: u64,
    kernel: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    failed_reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    failed_log: String,
}

impl From<&vmm::PreparedImage> for PreparedView {
    fn from(p: &vmm::PreparedImage) -> Self {
        PreparedView {
            prepared: p.prepared,
            packages: p.packages.clone(),
            finished_unix: p.finished_unix,
            seconds: p.seconds,
            has_systemd: p.has_systemd,
            has_ssh_server: p.has_ssh_server,
            size_bytes: p.size_bytes,
            kernel: p.kernel.clone(),
            failed_reason: p.failed_reason.clone(),
            failed_log: p.failed_log.clone(),
        }
    }
}

impl ImageView {
    pub(super) fn with_preparation(
        mut self,
        prepared: &HashMap<String, vmm::PreparedImage>,
    ) -> Self {
        self.preparation = prepared.get(&self.digest).map(PreparedView::from);
        self
    }

    /// `yes`, `no` (needs it, not done yet), `failed`, or `-` (needs none).
    fn prepared_word(&self) -> &'static str {
        match &self.preparation {
            Some(p) if p.prepared => "yes",
            Some(_) if self.needs_preparation => "failed",
            _ if self.needs_preparation => "no",
            _ => "-",
        }
    }
}

#[derive(Debug, Serialize, Default)]
pub(super) struct GuestView {
    has_systemd: bool,
    has_ssh_server: bool,
    os_id: String,
    os_id_like: Vec<String>,
    os_version_id: String,
    has_agent: bool,
}

impl From<&pb::Image> for ImageView {
    fn from(i: &pb::Image) -> Self {
        let g = i.guest.clone().unwrap_or_default();
        ImageView {
            name: i.name.clone(),
            reference: i.reference.clone(),
            digest: i.digest.clone(),
            platform: i.platform.clone(),
            size_bytes: i.size_bytes,
            content_bytes: i.content_bytes,
            created_unix: i.created_unix,
            default_kernel: i.default_kernel.clone(),
            direct_boot: i.direct_boot,
            guest: GuestView {
                has_systemd: g.has_systemd,
                has_ssh_server: g.has_ssh_server,
                os_id: g.os_id.clone(),
                os_id_like: g.os_id_like.clone(),
                os_version_id: g.os_version_id,
                has_agent: g.has_agent,
            },
            holders: i.holders.clone(),
            layers: i.layers.clone(),
            fetched_from: i.fetched_from.clone(),
            plain_http: i.plain_http,
            needs_preparation: banger_proto::guest::needs_preparation(
                i.direct_boot,
                g.has_agent,
                &g.os_id,
                &g.os_id_like,
                g.has_systemd,
                g.has_ssh_server,
            ),
            preparation: None,
        }
    }
}

/// `image pull` and `image import`: the image, or one line saying what
/// was built from where.
pub(super) fn print_built(ctx: &Context, image: &pb::Image, how: &str) -> Result<()> {
    let view = ImageView::from(image);
    if ctx.json {
        return output::print_json(&view);
    }
    println!(
        "{} ({}, {}) {how}",
        view.name,
        output::short_digest(&view.digest),
        output::human_bytes(view.size_bytes),
    );
    Ok(())
}

/// `image list`.
pub(super) fn print_images(ctx: &Context, images: &[ImageView]) -> Result<()> {
    if ctx.json {
        return output::print_json(&images);
    }
    println!("{}", images_table(images));
    Ok(())
}

fn images_table(images: &[ImageView]) -> comfy_table::Table {
    let mut t = output::table([
        "NAME",
        "REFERENCE",
        "DIGEST",
        "SIZE",
        "KERNEL",
        "PREPARED",
        "CREATED",
    ]);
    for i in images {
        t.add_row(vec![
            i.name.clone(),
            i.reference.clone(),
            output::short_digest(&i.digest),
            output::human_bytes(i.size_bytes),
            i.default_kernel.clone(),
            i.prepared_word().to_owned(),
            output::timestamp(i.created_unix),
        ]);
    }
    t
}

/// `image show`.
pub(super) fn print_image(ctx: &Context, json: &ImageView) -> Result<()> {
    if ctx.json {
        return output::print_json(json);
    }
    let g = &json.guest;
    println!("name:           {}", json.name);
    println!("reference:      {}", json.reference);
    println!("digest:         {}", json.digest);
    println!("platform:       {}", json.platform);
    println!("size:           {}", output::human_bytes(json.size_bytes));
    println!(
        "content:        {}",
        output::human_bytes(json.content_bytes)
    );
    println!("created:        {}", output::timestamp(json.created_unix));
    if json.plain_http {
        println!(
            "fetched from:   {} (plain HTTP, as configured: no TLS; the content is still checked against its digests)",
            json.fetched_from
        );
    } else if !json.fetched_from.is_empty() {
        println!("fetched from:   {}", json.fetched_from);
    }
    println!("default kernel: {}", json.default_kernel);
    println!("direct boot:    {}", json.direct_boot);
    println!(
        "guest:          {} {} (like: {}), systemd: {}, sshd: {}, agent: {}",
        g.os_id,
        g.os_version_id,
        g.os_id_like.join(" "),
        g.has_systemd,
        g.has_ssh_server,
        g.has_agent
    );
    println!("prepared:       {}", prepared_line(json));
    println!("holders:        {}", json.holders.join(", "));
    println!("layers:         {}", json.layers.len());
    Ok(())
}

/// `image prepare`: the preparation, or one line about it.
pub(super) fn print_prepared(ctx: &Context, name: &str, p: &vmm::PreparedImage) -> Result<()> {
    let view = PreparedView::from(p);
    if ctx.json {
        return output::print_json(&view);
    }
    println!(
        "{name} prepared in {:.0}s: installed {}; its VMs boot with{} systemd and with{} sshd",
        view.seconds,
        if view.packages.is_empty() {
            "nothing".to_owned()
        } else {
            view.packages.join(", ")
        },
        if view.has_systemd { "" } else { "out" },
        if view.has_ssh_server { "" } else { "out" },
    );
    Ok(())
}

/// `image prune`: what it removed.
#[derive(Debug, Serialize)]
pub(super) struct PruneView {
    pub blobs_removed: u32,
    pub bytes_freed: u64,
}

pub(super) fn print_prune(ctx: &Context, view: &PruneView) -> Result<()> {
    if ctx.json {
        return output::print_json(view);
    }
    println!(
        "removed {} blobs, freed {}",
        view.blobs_removed,
        output::human_bytes(view.bytes_freed)
    );
    Ok(())
}

/// `image show`'s line about the preparation.
fn prepared_line(json: &ImageView) -> String {
    match &json.preparation {
        Some(p) if p.prepared => format!(
            "yes, {} ago in {:.0}s: installed {}; VMs get systemd: {}, sshd: {}",
            output::age(p.finished_unix),
            p.seconds,
            p.packages.join(", "),
            p.has_systemd,
            p.has_ssh_server
        ),
        Some(p) => format!(
            "no: the last preparation failed {} ago: {}\n                console log: {}\n                `banger image prepare {} --force` tries again",
            output::age(p.finished_unix),
            p.failed_reason.lines().next().unwrap_or_default(),
            p.failed_log,
            json.name
        ),
        None if json.needs_preparation => format!(
            "no: it lacks an init or sshd; the first `vm create` prepares it (or `banger image prepare {}`)",
            json.name
        ),
        None => "not needed".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_view_feeds_json_and_table() {
        let image = pb::Image {
            name: "debian-bookworm".into(),
            reference: "docker.io/library/debian:bookworm".into(),
            digest: "sha256:0123456789abcdef".into(),
            size_bytes: 8 << 20,
            guest: Some(pb::GuestFacts {
                has_systemd: true,
                has_ssh_server: true,
                os_id: "debian".into(),
                has_agent: true,
                ..Default::default()
            }),
            ..Default::default()
        };
        let prepared = HashMap::from([(
            "sha256:0123456789abcdef".to_owned(),
            vmm::PreparedImage {
                prepared: true,
                ..Default::default()
            },
        )]);
        let view = ImageView::from(&image).with_preparation(&prepared);
        let json = serde_json::to_value(&view).unwrap();
        assert_eq!(json["name"], "debian-bookworm");
        assert_eq!(json["guest"]["has_systemd"], true);
        assert_eq!(json["preparation"]["prepared"], true);
        assert!(json["preparation"].get("failed_reason").is_none());
        let table = images_table(&[view]).to_string();
        assert!(
            table.contains("0123456789ab") && table.contains("8.0 MiB") && table.contains("yes"),
            "{table}"
        );
    }
}
