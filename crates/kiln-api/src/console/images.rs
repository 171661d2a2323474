//! Images: a list whose states change live, and an image's page (timeline, components, tests,
//! packages and their diff, outputs with the commands to use them, usage, the live log).

use askama::Template;
use kiln_core::record::{ImageRecord, ImageSummary};
use kiln_store::{Filter, Kind, Order};

use super::frame::{page, Frame, Nav};
use super::json::{link, owner};
use super::pipelines::seconds;
use super::{Ctx, Page};
use crate::error::ApiError;

mod detail;
pub mod log;

pub use log::stream as log;

/// An image in the list.
pub struct Row {
    pub href: String,
    pub name: String,
    pub version: String,
    pub state: String,
    pub created: String,
    pub took: String,
    pub cache_hits: usize,
    pub owner: String,
}

/// An image as the lists show it (the images list, a pipeline's history).
pub fn row(i: &ImageSummary, own: &str) -> Row {
    Row {
        href: link(&i.arn).unwrap_or_default(),
        name: i.name.clone(),
        version: format!("{}/{}", i.version, i.build),
        state: i.state.as_str().to_string(),
        created: i.created.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        took: if i.state.is_final() {
            seconds(i.duration_ms)
        } else {
            "running".into()
        },
        cache_hits: i.cache_hits,
        owner: owner(&i.arn, own),
    }
}

#[derive(Template)]
#[template(path = "console/images.html")]
struct List {
    frame: Frame,
    rows: Vec<Row>,
}

#[derive(Template)]
#[template(path = "console/images_rows.html")]
struct Rows {
    rows: Vec<Row>,
}

/// `GET /console/images` (`?part=rows`: the table's body alone, which the page asks for every
/// 2 s so that states change as builds go).
pub async fn list(ctx: &Ctx) -> Page {
    let p = ctx.principal();
    let newest = |f: Filter| Filter {
        kind: Some(Kind::Image),
        order: Order::Newest,
        limit: Some(100),
        ..f
    };
    let mut rows: Vec<Row> = Vec::new();
    let own = ctx
        .app
        .records
        .summaries(&newest(Filter {
            arn_prefix: Some(p.arn_prefix()),
            ..Filter::default()
        }))
        .await
        .map_err(ApiError::service)?;
    let shared = ctx
        .app
        .records
        .summaries(&newest(Filter {
            shared_with: Some(p.account.clone()),
            ..Filter::default()
        }))
        .await
        .map_err(ApiError::service)?;
    rows.extend(own.iter().map(|i| row(i, &p.account)));
    rows.extend(shared.iter().map(|i| row(i, &p.account)));
    if ctx.q("part") == Some("rows") {
        return page(&Rows { rows });
    }
    page(&List {
        frame: ctx.frame("Images", Nav::Images),
        rows,
    })
}

/// The record an image ARN names for the session: its own, or one shared with it.
pub(crate) async fn record(ctx: &Ctx, arn: &str) -> Result<(ImageRecord, bool), ApiError> {
    if let Some(r) = crate::ops::shared_images::record(&ctx.app, ctx.principal(), arn).await? {
        return Ok((r, false));
    }
    let r = crate::ops::images::record(&ctx.app, ctx.principal(), arn).await?;
    Ok((r, true))
}

/// `GET /console/image?arn=` (`?part=summary`: everything but the log, which the page asks
/// for every 2 s until the build ends).
pub async fn detail(ctx: &Ctx) -> Page {
    let arn = ctx.q("arn").unwrap_or("").to_string();
    let (rec, own) = record(ctx, &arn).await?;
    let summary = detail::Summary::of(ctx, &rec).await;
    let summary_url = format!(
        "/console/image?arn={}&part=summary",
        super::encode(&rec.arn)
    );
    let running = !rec.state.is_final();
    if ctx.q("part") == Some("summary") {
        return page(&detail::SummaryPart {
            arn: rec.arn.clone(),
            summary,
            running,
            summary_url,
        });
    }
    let (lines, from) = if own {
        let source = kiln_core::build::log::LogSource::of(ctx.app.records.store(), &rec).await;
        log::written(&source).await
    } else {
        (Vec::new(), 0)
    };
    page(&detail::Detail {
        frame: ctx.frame(format!("{} {}", rec.name, rec.build_version()), Nav::Images),
        title: format!("{} {}", rec.name, rec.build_version()),
        log_url: format!("/console/log?arn={}", super::encode(&rec.arn)),
        arn: rec.arn.clone(),
        summary,
        own,
        lines,
        from,
        running,
        summary_url,
    })
}
