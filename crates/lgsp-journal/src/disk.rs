//! The free space of the disk a SQLite journal lives on: checked before a packet is written, so a full disk
//! refuses new packets cleanly (503 `journal.disk_full`) while outcomes of what was accepted still have room.

use std::path::Path;

/// Bytes an unprivileged writer may still use on the filesystem holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(dir)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_free_space_of_a_directory_is_read() {
        let dir = std::env::temp_dir();
        assert!(super::free_bytes(&dir).unwrap() > 0);
        assert!(super::free_bytes(std::path::Path::new("/no/such/dir")).is_err());
    }
}
