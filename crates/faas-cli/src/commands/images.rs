//! `faas images build`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use faas_common::Language;
use faas_images::{ImageKind, ImageStore};

/// Image commands.
#[derive(Subcommand)]
pub enum ImagesCommand {
    /// Build (or confirm cached) runtime root filesystems and the images
    /// dependency installers run in.
    Build(BuildArgs),
}

/// `faas images build` flags.
#[derive(Args)]
pub struct BuildArgs {
    /// Languages to build: python, node, shell [default: all].
    languages: Vec<String>,
    /// Rebuild even when the recipe is unchanged.
    #[arg(long)]
    force: bool,
    /// Image cache directory [default: /var/lib/faas/images].
    #[arg(long, env = "FAAS_IMAGES_DIR")]
    images_dir: Option<PathBuf>,
    /// Guest agent binary to include [default: faas-guest-agent beside this binary].
    #[arg(long, env = "FAAS_AGENT_PATH")]
    agent_path: Option<PathBuf>,
    /// Also build the microVM guest: kernel, initramfs and a root disk per language.
    #[arg(long)]
    microvm: bool,
    /// Then remove the images and disks of other recipes or agent binaries
    /// that no running server holds (needs every language).
    #[arg(long)]
    prune: bool,
}

/// Run an image command.
pub async fn run(cmd: ImagesCommand) -> Result<ExitCode> {
    let ImagesCommand::Build(args) = cmd;
    let languages: Vec<Language> = if args.languages.is_empty() || args.languages == ["all"] {
        Language::IMAGES.to_vec()
    } else {
        args.languages
            .iter()
            .map(|l| l.parse::<Language>())
            .collect::<Result<_, _>>()?
    };
    let dir = args
        .images_dir
        .unwrap_or_else(|| PathBuf::from("/var/lib/faas/images"));
    if args.prune && languages.len() != Language::IMAGES.len() {
        bail!("--prune needs every language built (give none, or all)");
    }
    let agent = faas_platform::agent_path(args.agent_path)?;
    let mut keep = Vec::new();
    let store = ImageStore::new(&dir);
    for lang in languages {
        let progress = |line: &str| eprintln!("[images] {line}");
        let image = store
            .ensure(lang, &agent, args.force, &progress)
            .await
            .with_context(|| format!("cannot build the {lang} image"))?;
        println!("{lang}\t{}\t{}", image.hash, image.rootfs.display());
        keep.extend(image.rootfs.parent().map(Path::to_path_buf));
        if lang != Language::Shell {
            // The image its dependency installer runs in.
            let builder = store
                .ensure_kind(ImageKind::Builder(lang), &agent, args.force, &progress)
                .await
                .with_context(|| format!("cannot build the {lang} builder image"))?;
            println!(
                "{}\t{}\t{}",
                builder.kind,
                builder.hash,
                builder.rootfs.display()
            );
            keep.extend(builder.rootfs.parent().map(Path::to_path_buf));
        }
        if args.microvm {
            let disk = store
                .ensure_guest_disk(&image, args.force, &progress)
                .await
                .with_context(|| format!("cannot build the {lang} microVM disk"))?;
            println!("{lang}-disk\t{}\t{}", disk.hash, disk.path.display());
            keep.push(disk.path);
        } else if let Some(disk) = store.find_guest_disk(&image) {
            // Not asked for, but current: a prune keeps it.
            keep.push(disk.path);
        }
    }
    if args.microvm {
        let progress = |line: &str| eprintln!("[images] {line}");
        let kernel = store
            .ensure_guest_kernel(args.force, &progress)
            .await
            .context("cannot build the microVM guest kernel")?;
        println!("kernel\t{}", kernel.vmlinux.display());
        println!("initramfs\t{}", kernel.initramfs.display());
    }
    if args.prune {
        let removed = store.prune(&keep).context("cannot prune the image cache")?;
        for path in &removed {
            eprintln!("[images] pruned {}", path.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}
