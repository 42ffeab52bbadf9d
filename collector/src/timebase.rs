//! Kernel timestamps (`bpf_ktime_get_ns`, CLOCK_MONOTONIC) to UTC wall-clock time.
//!
//! The offset `REALTIME - MONOTONIC` is sampled at every drain, bracketed by two monotonic reads
//! so the error is at most half the bracket (typically < 1 µs). Re-sampling follows NTP steps.

fn clock_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; both clocks exist on every Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

/// CLOCK_MONOTONIC now, in ns (the clock of `bpf_ktime_get_ns`).
pub fn monotonic_now_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

#[derive(Clone, Copy, Debug)]
pub struct Timebase {
    /// REALTIME - MONOTONIC, ns.
    offset_ns: i128,
}

impl Timebase {
    pub fn sample() -> Self {
        let m1 = clock_ns(libc::CLOCK_MONOTONIC);
        let r = clock_ns(libc::CLOCK_REALTIME);
        let m2 = clock_ns(libc::CLOCK_MONOTONIC);
        Timebase {
            offset_ns: r - (m1 + m2) / 2,
        }
    }

    /// A fixed offset (tests).
    pub fn with_offset_ns(offset_ns: i128) -> Self {
        Timebase { offset_ns }
    }

    /// Monotonic ns to µs since the Unix epoch (UTC).
    pub fn to_unix_us(&self, mono_ns: u64) -> i64 {
        ((mono_ns as i128 + self.offset_ns).div_euclid(1000)) as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{SystemTime, UNIX_EPOCH};

    #[test]
    fn now_converts_to_wall_clock() {
        let tb = Timebase::sample();
        let mono = monotonic_now_ns();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_micros() as i64;
        let got = tb.to_unix_us(mono);
        assert!((got - wall).abs() < 5_000, "got {got}, wall {wall}");
    }

    #[test]
    fn fixed_offset_arithmetic() {
        let tb = Timebase::with_offset_ns(1_700_000_000_000_000_000);
        assert_eq!(tb.to_unix_us(0), 1_700_000_000_000_000);
        assert_eq!(tb.to_unix_us(1_999), 1_700_000_000_000_001);
        // Truncates toward the past, never rounds into the future.
        let tb = Timebase::with_offset_ns(-1);
        assert_eq!(tb.to_unix_us(0), -1);
    }
}
