//! A process' memory from `/proc/<pid>/status` (Linux).

/// Resident memory of a process, in KiB.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// `VmRSS`: resident now.
    pub rss_kib: u64,
    /// `VmHWM`: the peak resident set.
    pub hwm_kib: u64,
}

/// Reads `VmRSS` and `VmHWM` of `pid`.
///
/// # Errors
/// The process is gone or the file has no such lines.
pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = status
            .lines()
            .find(|line| line.starts_with(name))
            .ok_or_else(|| anyhow::anyhow!("no {name} in /proc/{pid}/status"))?;
        let value = line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("malformed {line:?}"))?;
        Ok(value.parse()?)
    };
    Ok(Memory {
        rss_kib: field("VmRSS:")?,
        hwm_kib: field("VmHWM:")?,
    })
}

/// CPU time (user + system) `pid` has used so far, in seconds.
///
/// # Errors
/// The process is gone or `/proc/<pid>/stat` is malformed.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces), from field 3 (`state`) on.
    let (_, rest) = stat
        .rsplit_once(')')
        .ok_or_else(|| anyhow::anyhow!("malformed /proc/{pid}/stat"))?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .ok_or_else(|| anyhow::anyhow!("short /proc/{pid}/stat"))?
            .parse::<f64>()?)
    };
    // utime is field 14, stime field 15; USER_HZ is 100 on Linux.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let memory = super::memory(std::process::id()).unwrap();
        assert!(memory.rss_kib > 0 && memory.hwm_kib >= memory.rss_kib);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(super::cpu_seconds(std::process::id()).unwrap() >= 0.0);
    }
}
