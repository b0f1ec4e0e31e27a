//! SendFile and DescribeSendFileResults (Cloud Assistant), and deckhand's
//! `PutFileContent` extension for content larger than `Content` allows.
//!
//! A file delivery is an invocation of kind `SendFile` (the lifecycle's
//! `CommandType::SendFile`): the same targets, states, delivery path and
//! agent journal as a command. Its content is stored once per SHA-256 in
//! chunks (`store::put_file_chunk`) that agents pull. docs/files.md is the
//! user's view.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::error::ApiError;
use super::invocations::{MAX_INVOKE_INSTANCES, create_and_push, error_fields, new_id, overall_status_filter, targets};
use super::params::Params;
use super::{Paging, Request};
use crate::hub::store::{FileRow, InvocationFilter, InvocationRow, TargetRow, now_str};
use crate::lifecycle::{CommandType, Counts, InvocationStatus, RepeatMode};
use crate::protocol::{FILE_CHUNK_BYTES, FileSpec, MAX_FILE_BYTES, MAX_FILE_CONTENT_BYTES};

/// Cloud Assistant raises a `Timeout` below 10 s to 10 s; so does deckhand.
const MIN_TIMEOUT: i64 = 10;
const MAX_TIMEOUT: i64 = 86_400;
const DEFAULT_TIMEOUT: i64 = 60;
/// `Name`: Alibaba allows 255 characters; a file name is at most 255 bytes
/// on the filesystems agents write to, which the agent checks.
const MAX_NAME: usize = 255;
/// `TargetDir`: deckhand's bound (PATH_MAX).
const MAX_TARGET_DIR: usize = 4096;
/// `FileOwner`, `FileGroup`: Alibaba's 64 characters.
const MAX_USER_GROUP: usize = 64;

fn hex_sha256(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// A `ContentSha256` parameter: 64 lowercase hex digits.
fn sha_param(p: &Params) -> Result<String, ApiError> {
    let s = p.require("ContentSha256")?;
    if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Err(ApiError::invalid("ContentSha256", "must be 64 lowercase hexadecimal digits (a SHA-256)"));
    }
    Ok(s.to_string())
}

/// `Content` per `ContentType`, at most 32 KiB after decoding (Alibaba).
fn decode_file_content(p: &Params) -> Result<(Vec<u8>, String), ApiError> {
    let raw = p.require("Content")?;
    let (bytes, content_type) = match p.get("ContentType").unwrap_or("PlainText") {
        t if t.eq_ignore_ascii_case("Base64") => {
            (B64.decode(raw).map_err(|e| ApiError::invalid("Content", format!("not valid base64: {e}")))?, "Base64")
        }
        t if t.eq_ignore_ascii_case("PlainText") => (raw.as_bytes().to_vec(), "PlainText"),
        other => {
            return Err(ApiError::invalid(
                "ContentType",
                format!("{:?} is not PlainText or Base64", other.chars().take(32).collect::<String>()),
            ));
        }
    };
    if bytes.len() > MAX_FILE_CONTENT_BYTES {
        return Err(ApiError::invalid(
            "Content",
            format!(
                "content is {} bytes, the limit is {MAX_FILE_CONTENT_BYTES} bytes (32 KiB); larger files go through PutFileContent and ContentSha256 (docs/files.md)",
                bytes.len()
            ),
        ));
    }
    Ok((bytes, content_type.to_string()))
}

/// Stores `bytes` as a content (once per digest) and returns its digest.
async fn store_content(req: &Request<'_>, bytes: &[u8]) -> Result<String, ApiError> {
    let sha = hex_sha256(bytes);
    if req.hub.store.file_content(&sha).await?.is_none() {
        within_file_store(req, bytes.len() as u64).await?;
    }
    if bytes.is_empty() {
        // An empty file has no chunk; its content row still records it.
        req.hub.store.put_file_chunk(&sha, 0, 0, &[]).await?;
    }
    for (seq, chunk) in bytes.chunks(FILE_CHUNK_BYTES).enumerate() {
        req.hub.store.put_file_chunk(&sha, bytes.len() as i64, seq as i64, chunk).await?;
    }
    Ok(sha)
}

/// A new content of `size` bytes must fit in `file_store_max_mib` beside
/// those stored (deckhand's bound; contents not used for
/// `file_retention_days` are deleted by [`pruner`]).
async fn within_file_store(req: &Request<'_>, size: u64) -> Result<(), ApiError> {
    let max = req.hub.config.file_store_max_bytes;
    let stored = req.hub.store.file_store_bytes().await?.max(0) as u64;
    if stored.saturating_add(size) > max {
        return Err(ApiError::new(
            axum::http::StatusCode::FORBIDDEN,
            "QuotaExceeded.FileStore",
            format!(
                "the hub stores {stored} bytes of file contents and its limit is {max} bytes (file_store_max_mib); \
                 this upload of {size} bytes does not fit until unused contents expire (file_retention_days)"
            ),
        ));
    }
    Ok(())
}

/// Background task: hourly, deletes stored contents not used for
/// `file_retention_days` that no delivery still needs.
pub async fn pruner(hub: std::sync::Arc<crate::hub::Hub>) {
    loop {
        let cutoff = crate::hub::store::ago_str(hub.config.file_retention);
        match hub.store.prune_file_contents(&cutoff).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "unused file contents deleted"),
            Err(e) => tracing::warn!(error = %e, "file content pruner"),
        }
        tokio::select! {
            _ = hub.shutdown.cancelled() => return,
            _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
        }
    }
}

/// Chunks a content of `size` bytes is stored in.
fn chunk_count(size: u64) -> u64 {
    size.div_ceil(FILE_CHUNK_BYTES as u64)
}

/// A content uploaded with `PutFileContent`: every chunk present and the
/// digest right (read one chunk at a time). A content whose chunks do not
/// hash to its name is refused and forgotten, so it can be uploaded again.
async fn uploaded_content(req: &Request<'_>, sha: &str) -> Result<u64, ApiError> {
    let store = &req.hub.store;
    let Some(c) = store.file_content(sha).await? else {
        return Err(ApiError::invalid("ContentSha256", "no content with this SHA-256 was uploaded (PutFileContent)"));
    };
    let size = c.size.max(0) as u64;
    let expected = chunk_count(size);
    if c.chunks_present as u64 != expected {
        return Err(ApiError::invalid(
            "ContentSha256",
            format!("the upload is incomplete: {} of {expected} chunks are stored", c.chunks_present),
        ));
    }
    if c.verified {
        // Hashed once already: chunks are never changed once stored.
        store.touch_file_content(sha, false).await?;
        return Ok(size);
    }
    let mut hasher = Sha256::new();
    let mut read = 0u64;
    for seq in 0..expected {
        let chunk = store.file_chunk(sha, seq as i64).await?.ok_or_else(|| ApiError::internal("stored chunk vanished"))?;
        read += chunk.len() as u64;
        hasher.update(&chunk);
    }
    if read != size || hex::encode(hasher.finalize()) != sha {
        store.delete_file_content(sha).await?;
        return Err(ApiError::invalid(
            "ContentSha256",
            "the uploaded chunks do not hash to this SHA-256 (or do not add up to its size); the upload was discarded, upload it again",
        ));
    }
    store.touch_file_content(sha, true).await?;
    Ok(size)
}

pub async fn send_file(req: &Request<'_>) -> Result<Value, ApiError> {
    let p = &req.params;
    if let Some(token) = p.string("ClientToken", 64)?
        && let Some(existing) = req.hub.store.find_by_client_token(&token).await?
    {
        return Ok(json!({ "InvokeId": existing }));
    }
    let name = p.string("Name", MAX_NAME)?.filter(|n| !n.is_empty()).ok_or_else(|| ApiError::missing("Name"))?;
    let target_dir = p.string("TargetDir", MAX_TARGET_DIR)?.filter(|d| !d.is_empty()).ok_or_else(|| ApiError::missing("TargetDir"))?;
    let mode = p.string("FileMode", 8)?.filter(|m| !m.is_empty()).unwrap_or_else(|| "0644".to_string());
    let owner = p.string("FileOwner", MAX_USER_GROUP)?.unwrap_or_default();
    let group = p.string("FileGroup", MAX_USER_GROUP)?.unwrap_or_default();
    let overwrite = p.bool("Overwrite")?.unwrap_or(false);
    let timeout = p.int("Timeout", 1, MAX_TIMEOUT)?.unwrap_or(DEFAULT_TIMEOUT).max(MIN_TIMEOUT);
    let description = p.string("Description", 512)?.unwrap_or_default();
    let (sha256, size, content_type) = match (p.get("Content"), p.get("ContentSha256")) {
        (Some(_), Some(_)) => return Err(ApiError::invalid("ContentSha256", "give Content or ContentSha256, not both")),
        (None, None) => return Err(ApiError::missing("Content")),
        (Some(_), None) => {
            let (bytes, content_type) = decode_file_content(p)?;
            let size = bytes.len() as u64;
            (store_content(req, &bytes).await?, size, content_type)
        }
        (None, Some(_)) => {
            let sha = sha_param(p)?;
            let size = uploaded_content(req, &sha).await?;
            (sha, size, "Base64".to_string())
        }
    };
    let resolved = targets(req, "SendFile").await?;
    let spec = FileSpec { name: name.clone(), target_dir: target_dir.clone(), mode, owner: owner.clone(), group, overwrite, size, sha256 };
    let inv = InvocationRow {
        invoke_id: new_id("f"),
        command_id: String::new(),
        command_name: name,
        command_type: CommandType::SendFile,
        content: String::new(),
        timeout_secs: timeout,
        working_dir: target_dir,
        username: owner,
        enable_parameter: false,
        parameters: "{}".to_string(),
        repeat_mode: RepeatMode::Once,
        frequency: String::new(),
        created_at: now_str(),
        client_token: p.get("ClientToken").unwrap_or("").to_string(),
        stop_requested: false,
        counts: Counts::default(),
        window: Default::default(),
        unreachable: resolved.unreachable,
        revision: 0,
        file: Some(FileRow { spec, description, content_type }),
    };
    let mut v = create_and_push(req, None, inv, &resolved.targets).await?;
    if let Value::Object(m) = &mut v {
        m.remove("CommandId");
    }
    Ok(v)
}

/// deckhand extension: one chunk of a content larger than `Content`
/// allows. `ContentSha256` names the whole content, `Size` its length
/// (at most 100 MiB), `ChunkIndex` which [`FILE_CHUNK_BYTES`] chunk this
/// is, `Content` the chunk in base64 (every chunk full but the last).
/// Chunks may come in any order and again; `SendFile` with
/// `ContentSha256` then checks the whole.
pub async fn put_file_content(req: &Request<'_>) -> Result<Value, ApiError> {
    let p = &req.params;
    let sha = sha_param(p)?;
    let size = p.int("Size", 1, MAX_FILE_BYTES as i64)?.ok_or_else(|| ApiError::missing("Size"))? as u64;
    let chunks = chunk_count(size);
    let seq = p.int("ChunkIndex", 0, chunks as i64 - 1)?.ok_or_else(|| ApiError::missing("ChunkIndex"))? as u64;
    let data = B64.decode(p.require("Content")?).map_err(|e| ApiError::invalid("Content", format!("not valid base64: {e}")))?;
    let expected = if seq + 1 == chunks { size - seq * FILE_CHUNK_BYTES as u64 } else { FILE_CHUNK_BYTES as u64 };
    if data.len() as u64 != expected {
        return Err(ApiError::invalid("Content", format!("chunk {seq} is {} bytes; it must be {expected} bytes", data.len())));
    }
    match req.hub.store.file_content(&sha).await? {
        Some(c) if c.size as u64 != size => {
            return Err(ApiError::invalid("Size", format!("this SHA-256 was uploaded with size {}, not {size}", c.size)));
        }
        Some(_) => {}
        None => within_file_store(req, size).await?,
    }
    req.hub.store.put_file_chunk(&sha, size as i64, seq as i64, &data).await?;
    let present = req.hub.store.file_content(&sha).await?.map(|c| c.chunks_present).unwrap_or(0);
    Ok(json!({ "ContentSha256": sha, "ChunkCount": chunks, "ChunksStored": present }))
}

pub async fn describe_send_file_results(req: &Request<'_>) -> Result<Value, ApiError> {
    let p = &req.params;
    let paging = Paging::from(p, 10, 50)?;
    let filter = InvocationFilter {
        invoke_id: p.get("InvokeId").map(str::to_string),
        instance_id: p.get("InstanceId").map(str::to_string),
        command_type: Some(CommandType::SendFile),
        file_name: p.get("Name").map(str::to_string),
        status: overall_status_filter(p)?,
        ..Default::default()
    };
    let (rows, total) = req.hub.store.list_invocations(&filter, paging.page).await?;
    let mut list = Vec::with_capacity(rows.len());
    for inv in rows {
        let Some(file) = &inv.file else { continue };
        let targets = req.hub.store.some_targets(&inv.invoke_id, MAX_INVOKE_INSTANCES, false).await?;
        let instances: Vec<Value> = targets.iter().map(instance_json).collect();
        list.push(json!({
            "InvokeId": inv.invoke_id,
            "Name": file.spec.name,
            "Description": file.description,
            "Content": shown_content(req, file).await?,
            "ContentType": file.content_type,
            "TargetDir": file.spec.target_dir,
            "FileMode": file.spec.mode,
            "FileOwner": file.spec.owner,
            "FileGroup": file.spec.group,
            // The SDK models type this one as a string.
            "Overwrite": file.spec.overwrite.to_string(),
            "CreationTime": inv.created_at,
            "InvocationStatus": inv.invocation_status().as_str(),
            "VmCount": inv.counts.total(),
            "InvokeInstances": { "InvokeInstance": instances },
            // deckhand extensions (docs/files.md): as DescribeInvocations'
            // (the CLI's fleet view follows them).
            "TargetCount": inv.counts.total(),
            "StatusCounts": InvocationStatus::ALL.iter().map(|st| (st.as_str().to_string(), Value::from(inv.counts.get(*st)))).collect::<Map<String, Value>>(),
            "Size": file.spec.size,
            "ContentSha256": file.spec.sha256,
            "Timeout": inv.timeout_secs,
        }));
    }
    let mut out = Map::new();
    out.insert("Invocations".into(), json!({ "Invocation": list }));
    paging.annotate(&mut out, total);
    Ok(Value::Object(out))
}

/// `Content` as the caller sent it, for a file within Alibaba's 32 KiB;
/// larger (extension) files show none.
async fn shown_content(req: &Request<'_>, file: &FileRow) -> Result<String, ApiError> {
    if file.spec.size == 0 || file.spec.size > MAX_FILE_CONTENT_BYTES as u64 {
        return Ok(String::new());
    }
    let bytes = req.hub.store.file_chunk(&file.spec.sha256, 0).await?.unwrap_or_default();
    Ok(if file.content_type == "PlainText" { String::from_utf8_lossy(&bytes).into_owned() } else { B64.encode(bytes) })
}

fn instance_json(t: &TargetRow) -> Value {
    let (code, info) = error_fields(&t.error_code, &t.error_info);
    json!({
        "InstanceId": t.instance_id,
        "InvocationStatus": t.status.as_str(),
        "ErrorCode": code,
        "ErrorInfo": info,
        "CreationTime": t.created_at,
        "StartTime": t.start_time,
        "FinishTime": t.finish_time,
        "UpdateTime": t.updated_at,
    })
}
