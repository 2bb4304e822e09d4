//! How long reading a tree's metadata takes from a cold cache: the floor
//! under an unchanged backup. Drops the page cache (as root), then lists
//! every folder under DIR and reads every entry's inode with the agent's
//! read-ahead (`arca_agent::prefetch`), on 1, 2, 4, 8 and 16 threads, and
//! prints the time and the CPU time each took.
//!
//! ```sh
//! cargo run --release -p arca-agent --example cold_walk -- /path/to/tree
//! ```

fn main() {
    let Some(root) = std::env::args().nth(1).map(std::path::PathBuf::from) else {
        eprintln!("usage: cold_walk DIR");
        std::process::exit(2);
    };
    for threads in [1usize, 2, 4, 8, 16] {
        let dropped = std::process::Command::new("sh")
            .arg("-c")
            .arg("sync && echo 3 > /proc/sys/vm/drop_caches")
            .status()
            .is_ok_and(|s| s.success());
        let stop = std::sync::atomic::AtomicBool::new(false);
        let cpu0 = cpu_seconds();
        let t = std::time::Instant::now();
        let listed =
            arca_agent::prefetch::run(std::slice::from_ref(&root), threads, None, true, &stop);
        println!(
            "{threads:>2} threads: {listed} folders listed and every entry's metadata read in {:.2} s, {:.2} CPU-s{}",
            t.elapsed().as_secs_f64(),
            cpu_seconds() - cpu0,
            if dropped {
                " (cold)"
            } else {
                " (the cache could not be dropped: not root?)"
            }
        );
    }
}

/// User and system time of this process so far (from /proc; ticks of
/// 1/100 s).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, f)| f.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) + ticks(12)) / 100.0
}
