//! A writer as async Rust programs are: `tokio::fs` opens on a blocking
//! pool thread and the descriptor is closed on a runtime worker thread.
//! Prints `close 0 same` (committed and read back identical) or
//! `close ERRNO`. The upload tests run it against a mount.

use std::os::fd::IntoRawFd;
use tokio::io::AsyncWriteExt;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::io::Result<()> {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let [_, source, target] = args.as_slice() else {
        eprintln!("usage: tokio_upload SOURCE TARGET");
        std::process::exit(2);
    };
    let data = tokio::fs::read(source).await?;
    let mut file = tokio::fs::File::create(target).await?;
    file.write_all(&data).await?;
    file.flush().await?;
    let fd = file.into_std().await.into_raw_fd();
    // SAFETY: `fd` was just taken out of its File; nothing else owns it.
    let closed = unsafe { libc::close(fd) };
    if closed != 0 {
        let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(-1);
        println!("close {errno}");
        return Ok(());
    }
    let stored = tokio::fs::read(target).await?;
    let same = if stored == data { "same" } else { "different" };
    println!("close 0 {same}");
    Ok(())
}
