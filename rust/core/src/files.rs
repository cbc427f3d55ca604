//! Opening data files: regular files only, with errors naming the path.
//!
//! Opening a FIFO for reading blocks until a writer appears (for ever, for a FIFO named `data_batch_1.bin`),
//! and a device or socket is no data file either, so every reader of the core asks for a regular file first.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::error::DataError;

/// What a file that is not a regular file is, for messages ("a FIFO", "a folder", ...).
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
    }
    if meta.is_dir() {
        "a folder"
    } else {
        "not a regular file"
    }
}

/// `path` opened for reading, and its length in bytes, if it is a regular file (symbolic links followed).
/// A missing file is [`DataError::Missing`] with `hint`; a link to a missing file, a FIFO, a device, a socket
/// or a folder is [`DataError::Format`] naming it, checked before it is opened (opening a FIFO would block).
pub fn open_regular(path: &Path, hint: &str) -> Result<(File, u64), DataError> {
    let meta = std::fs::metadata(path).map_err(|source| {
        if source.kind() != std::io::ErrorKind::NotFound {
            DataError::Io { path: path.to_path_buf(), source }
        } else if let Ok(target) = std::fs::read_link(path) {
            DataError::Format {
                path: path.to_path_buf(),
                message: format!("a symbolic link to {}, which does not exist", target.display()),
            }
        } else {
            DataError::Missing { path: path.to_path_buf(), hint: hint.to_string() }
        }
    })?;
    if !meta.is_file() {
        let what = kind_of(&meta);
        return Err(DataError::Format {
            path: path.to_path_buf(),
            message: format!("{what}, not a regular file; only regular files are read"),
        });
    }
    let file = File::open(path).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    Ok((file, meta.len()))
}

/// The bytes of the regular file `path` (see [`open_regular`]).
pub fn read_regular(path: &Path, hint: &str) -> Result<Vec<u8>, DataError> {
    let (mut file, len) = open_regular(path, hint)?;
    let mut bytes = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
    file.read_to_end(&mut bytes).map_err(|source| DataError::Io { path: path.to_path_buf(), source })?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_opened_and_errors_name_them() {
        let dir = std::env::temp_dir().join(format!("mdarts-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.bin");
        std::fs::write(&file, b"abc").unwrap();
        assert_eq!(read_regular(&file, "h").unwrap(), b"abc");
        let e = read_regular(&dir, "h").unwrap_err().to_string();
        assert_eq!(e, format!("{}: a folder, not a regular file; only regular files are read", dir.display()));
        let e = read_regular(&dir.join("gone"), "look elsewhere").unwrap_err();
        assert!(matches!(e, DataError::Missing { .. }) && e.to_string().contains("look elsewhere"), "{e}");
        #[cfg(unix)]
        {
            let link = dir.join("dangling");
            std::os::unix::fs::symlink(dir.join("nowhere"), &link).unwrap();
            let e = read_regular(&link, "h").unwrap_err().to_string();
            assert!(e.contains("dangling: a symbolic link to") && e.contains("which does not exist"), "{e}");
            let fifo = dir.join("data_batch_1.bin");
            let made = std::process::Command::new("mkfifo").arg(&fifo).status().map(|s| s.success());
            if matches!(made, Ok(true)) {
                let e = read_regular(&fifo, "h").unwrap_err().to_string();
                assert!(
                    e.ends_with(
                        "data_batch_1.bin: a FIFO (named pipe), not a regular file; only regular files are read"
                    ),
                    "{e}"
                );
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
