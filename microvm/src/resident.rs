//! This process's resident memory, split into the VMM's own pages and the
//! guest's (guest RAM is a memfd, so its pages count as shmem).

/// Resident set in KiB, from `/proc/self/status`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Resident {
    pub anon_kib: u64,
    pub file_kib: u64,
    pub shmem_kib: u64,
}

impl Resident {
    pub fn read() -> std::io::Result<Self> {
        Ok(Self::parse(&std::fs::read_to_string("/proc/self/status")?))
    }

    fn parse(status: &str) -> Self {
        let mut r = Self::default();
        for line in status.lines() {
            let mut it = line.split_whitespace();
            let (Some(key), Some(v)) = (it.next(), it.next()) else {
                continue;
            };
            let v: u64 = v.parse().unwrap_or(0);
            match key {
                "RssAnon:" => r.anon_kib = v,
                "RssFile:" => r.file_kib = v,
                "RssShmem:" => r.shmem_kib = v,
                _ => {}
            }
        }
        r
    }

    /// The VMM's own memory: everything but guest RAM.
    pub fn vmm_kib(&self) -> u64 {
        self.anon_kib + self.file_kib
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_split_into_vmm_and_guest_memory() {
        let s = "Name:\tx\nRssAnon:\t    1200 kB\nRssFile:\t     800 kB\nRssShmem:\t   65536 kB\n";

        let r = Resident::parse(s);

        assert_eq!(r.vmm_kib(), 2000);
        assert_eq!(r.shmem_kib, 65536);
    }
}
