//! `deckhand send-file LOCAL --to DIR`: put a local file on instances (by
//! id or tag) through `SendFile`, and follow each instance's delivery.
//!
//! Up to 32 KiB the file goes as Cloud Assistant's `Content`; larger files
//! (up to 100 MiB, a deckhand extension) are uploaded once in chunks with
//! `PutFileContent` and sent by digest (`ContentSha256`), read from disk
//! one chunk at a time. docs/files.md.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sha2::{Digest, Sha256};

use super::run::parse_duration;
use super::show::s;
use super::{Cli, CliError, Client};
use crate::protocol::{FILE_CHUNK_BYTES, MAX_FILE_BYTES, MAX_FILE_CONTENT_BYTES};

#[derive(Debug, clap::Args)]
pub struct SendFileArgs {
    /// The local file to send.
    pub local: PathBuf,
    /// Directory on the instances (created when missing).
    #[arg(long = "to", value_name = "DIR")]
    pub to: String,
    /// Target instance id (repeatable).
    #[arg(long = "instance", short = 'i', required_unless_present = "tags")]
    pub instances: Vec<String>,
    /// Target every instance carrying this tag: KEY=VALUE, or KEY for any value (repeatable).
    #[arg(long = "tag", value_name = "KEY[=VALUE]")]
    pub tags: Vec<String>,
    /// Name on the instances (default: the local file's name).
    #[arg(long)]
    pub name: Option<String>,
    /// Permissions, as chmod takes them.
    #[arg(long, default_value = "0644")]
    pub mode: String,
    /// Owner and group on the instances (default: the agent's user, root).
    #[arg(long)]
    pub owner: Option<String>,
    #[arg(long)]
    pub group: Option<String>,
    /// Replace an existing file (default: FileAlreadyExists).
    #[arg(long)]
    pub overwrite: bool,
    /// Time each instance has to write the file, e.g. 60s, 10m.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Submit and print the invoke id without waiting.
    #[arg(long)]
    pub no_wait: bool,
}

fn read_err(path: &Path) -> impl FnOnce(std::io::Error) -> CliError + '_ {
    move |source| CliError::Read { path: path.to_path_buf(), source }
}

/// Size and SHA-256 of a file, read in chunks.
fn digest(path: &Path) -> Result<(u64, String), CliError> {
    let mut f = std::fs::File::open(path).map_err(read_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; FILE_CHUNK_BYTES];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(read_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// Fills `buf` from `f` (short only at the end of the file).
fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Uploads a large file chunk by chunk (`PutFileContent`), showing progress.
fn upload(client: &Client, path: &Path, size: u64, sha: &str, quiet: bool) -> Result<(), CliError> {
    let mut f = std::fs::File::open(path).map_err(read_err(path))?;
    let chunks = size.div_ceil(FILE_CHUNK_BYTES as u64);
    let bar = if quiet { indicatif::ProgressBar::hidden() } else { indicatif::ProgressBar::new(size) };
    if let Ok(style) = indicatif::ProgressStyle::with_template("uploading [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}") {
        bar.set_style(style.progress_chars("=> "));
    }
    let mut buf = vec![0u8; FILE_CHUNK_BYTES];
    for seq in 0..chunks {
        let n = read_full(&mut f, &mut buf).map_err(read_err(path))?;
        client.call(
            "PutFileContent",
            &[
                ("ContentSha256", sha.to_string()),
                ("Size", size.to_string()),
                ("ChunkIndex", seq.to_string()),
                ("Content", B64.encode(&buf[..n])),
            ],
        )?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

pub fn run(cli: &Cli, args: &SendFileArgs) -> Result<i32, CliError> {
    let client = cli.client()?;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => args
            .local
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .ok_or_else(|| CliError::Usage(format!("{}: cannot take a file name from it; give --name", args.local.display())))?,
    };
    let (size, sha) = digest(&args.local)?;
    if size > MAX_FILE_BYTES {
        return Err(CliError::Usage(format!("{} is {size} bytes; the limit is {MAX_FILE_BYTES} bytes (100 MiB)", args.local.display())));
    }
    let mut p: Vec<(String, String)> = vec![
        ("Name".into(), name),
        ("TargetDir".into(), args.to.clone()),
        ("FileMode".into(), args.mode.clone()),
        ("Overwrite".into(), args.overwrite.to_string()),
        ("Timeout".into(), args.timeout.as_secs().to_string()),
    ];
    if size as usize <= MAX_FILE_CONTENT_BYTES {
        let bytes = std::fs::read(&args.local).map_err(read_err(&args.local))?;
        p.push(("Content".into(), B64.encode(bytes)));
        p.push(("ContentType".into(), "Base64".into()));
    } else {
        upload(&client, &args.local, size, &sha, cli.json)?;
        p.push(("ContentSha256".into(), sha));
    }
    if let Some(o) = &args.owner {
        p.push(("FileOwner".into(), o.clone()));
    }
    if let Some(g) = &args.group {
        p.push(("FileGroup".into(), g.clone()));
    }
    for (i, id) in args.instances.iter().enumerate() {
        p.push((format!("InstanceId.{}", i + 1), id.clone()));
    }
    super::run::tag_params(&args.tags, &mut p);
    let refs: Vec<(&str, String)> = p.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let v = client.call("SendFile", &refs)?;
    let invoke_id = s(&v, "InvokeId");
    if args.no_wait {
        println!("{invoke_id}");
        return Ok(0);
    }
    if !cli.json {
        eprintln!("file delivery {invoke_id} ({size} bytes)");
    }
    // Every target settles by itself (its timeout, the delivery timeout);
    // this bound only ends the wait on a hub that stops answering.
    let give_up = Instant::now() + args.timeout + Duration::from_secs(600);
    let followed = super::fleet::follow_kind(&client, cli.json, &invoke_id, give_up, super::fleet::FollowKind::File)?;
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&followed.summary).unwrap_or_default());
    }
    Ok(followed.code)
}
