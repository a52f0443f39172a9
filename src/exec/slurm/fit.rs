//! Whether a step's request can ever run where it is sent: read once per run from
//! what the partitions offer (`sinfo`), so a request no node can satisfy is refused
//! before anything is submitted, instead of a job pending forever
//! (`PartitionConfig`, `PartitionTimeLimit`).
//!
//! Raw flags (`resources sbatch=...`, `--sbatch-arg`) are passed as given and win over
//! ours; a field they set is not checked here (the pending-reason watch still catches
//! a request that cannot run).

use super::resources::Resources;
use super::scheduler::{NodeShape, Partition};

/// A request in numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ask {
    cpus: Option<u64>,
    memory_mb: Option<u64>,
    gpus: Option<u64>,
    minutes: Option<u64>,
}

/// sbatch's memory spelling in MB: `500M`, `32G`, `1T`, `2048` (MB), `1024K`.
pub fn memory_mb(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    match unit.to_ascii_uppercase().trim_end_matches('B') {
        "" | "M" => Some(n),
        "K" => Some(n.div_ceil(1024)),
        "G" => Some(n * 1024),
        "T" => Some(n * 1024 * 1024),
        _ => None,
    }
}

/// Slurm's time spelling in minutes (rounded up): `M`, `M:S`, `H:M:S`, `D-H`, `D-H:M`,
/// `D-H:M:S`; `infinite`/`UNLIMITED` is None.
pub fn minutes(s: &str) -> Option<Option<u64>> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("infinite") || s.eq_ignore_ascii_case("unlimited") {
        return Some(None);
    }
    let (days, rest) = match s.split_once('-') {
        Some((d, r)) => (d.parse::<u64>().ok()?, Some(r)),
        None => (0, None),
    };
    let nums = |t: &str| -> Option<Vec<u64>> { t.split(':').map(|x| x.parse::<u64>().ok()).collect() };
    let secs = match rest {
        // D-H, D-H:M, D-H:M:S
        Some(r) => match nums(r)?.as_slice() {
            [h] => h * 3600,
            [h, m] => h * 3600 + m * 60,
            [h, m, sec] => h * 3600 + m * 60 + sec,
            _ => return None,
        },
        // M, M:S, H:M:S
        None => match nums(s)?.as_slice() {
            [m] => m * 60,
            [m, sec] => m * 60 + sec,
            [h, m, sec] => h * 3600 + m * 60 + sec,
            _ => return None,
        },
    };
    Some(Some((days * 86400 + secs).div_ceil(60)))
}

fn shows_minutes(m: Option<u64>) -> String {
    match m {
        None => "unlimited".into(),
        Some(m) if m % 1440 == 0 => format!("{}-00:00:00", m / 1440),
        Some(m) => format!("{}:{:02}:00", m / 60, m % 60),
    }
}

/// Which fields raw flags set (then they are theirs, not checked).
fn raw_sets(flags: &[String], names: &[&str]) -> bool {
    flags
        .iter()
        .any(|f| names.iter().any(|n| f == n || f.starts_with(&format!("{n}="))))
}

fn fits(node: &NodeShape, a: &Ask) -> bool {
    a.cpus.is_none_or(|c| c <= node.cpus)
        && a.memory_mb.is_none_or(|m| m <= node.memory_mb)
        && a.gpus.is_none_or(|g| g <= node.gpus)
}

/// Why `step`'s request can never run on this cluster, or None. `extra`: the run's
/// `--sbatch-arg` flags; `partitions`: what `sinfo` said.
pub fn unsatisfiable(
    step: &str,
    r: &Resources,
    extra: &[String],
    partitions: &[Partition],
) -> Option<String> {
    let raw: Vec<String> = r.sbatch.iter().chain(extra).cloned().collect();
    if raw_sets(&raw, &["--partition", "-p"]) {
        return None;
    }
    let part = match &r.partition {
        Some(name) => match partitions.iter().find(|p| &p.name == name) {
            Some(p) => p,
            None => {
                let names: Vec<&str> = partitions.iter().map(|p| p.name.as_str()).collect();
                return Some(format!(
                    "{step} asks for partition `{name}`, which this cluster does not have (it has: {}); change `resources partition=` (on the node or in `defaults`)",
                    names.join(", ")
                ));
            }
        },
        None => partitions.iter().find(|p| p.default)?,
    };
    if part.state.starts_with("inact") {
        return Some(format!(
            "{step} goes to partition `{}`, which is inactive (it takes no jobs); choose another with `resources partition=`",
            part.name
        ));
    }
    let gpus = r.gpus.filter(|&g| g > 0);
    let ask = Ask {
        cpus: r.cpus.filter(|_| !raw_sets(&raw, &["--cpus-per-task", "-c"])),
        memory_mb: r
            .memory
            .as_deref()
            .and_then(memory_mb)
            .filter(|_| !raw_sets(&raw, &["--mem", "--mem-per-cpu", "--mem-per-gpu"])),
        gpus: gpus.filter(|_| !raw_sets(&raw, &["--gres", "--gpus", "-G", "--gpus-per-node"])),
        minutes: r
            .time
            .as_deref()
            .and_then(minutes)
            .flatten()
            .filter(|_| !raw_sets(&raw, &["--time", "-t"])),
    };
    let request = format!(
        "cpus={} memory={} gpus={} time={}",
        r.cpus.map_or("-".into(), |c| c.to_string()),
        r.memory.as_deref().unwrap_or("-"),
        gpus.unwrap_or(0),
        r.time.as_deref().unwrap_or("-")
    );
    let fix = "change `resources` on its node or in `defaults` (cpus=, memory=, gpus=, time=, partition=)";
    if let (Some(t), Some(max)) = (ask.minutes, part.max_minutes)
        && t > max
    {
        return Some(format!(
            "{step} asks for {request}, over the time limit of partition `{}` ({}); {fix}",
            part.name,
            shows_minutes(Some(max))
        ));
    }
    if part.nodes.is_empty() || part.nodes.iter().any(|n| fits(n, &ask)) {
        return None;
    }
    let offers: Vec<String> = part
        .nodes
        .iter()
        .map(|n| {
            format!(
                "{} node{} of {} CPUs, {} MB, {} GPUs",
                n.count,
                if n.count == 1 { "" } else { "s" },
                n.cpus,
                n.memory_mb,
                n.gpus
            )
        })
        .collect();
    Some(format!(
        "{step} asks for {request}, which no node of partition `{}` has ({}); {fix}",
        part.name,
        offers.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(name: &str, default: bool, max: Option<u64>, nodes: &[(u64, u64, u64)]) -> Partition {
        Partition {
            name: name.into(),
            default,
            state: "up".into(),
            max_minutes: max,
            nodes: nodes
                .iter()
                .map(|&(cpus, memory_mb, gpus)| NodeShape {
                    cpus,
                    memory_mb,
                    gpus,
                    count: 1,
                })
                .collect(),
        }
    }

    fn ask(cpus: u64, memory: &str, gpus: u64, time: &str) -> Resources {
        Resources {
            cpus: Some(cpus),
            memory: Some(memory.into()),
            gpus: Some(gpus),
            time: Some(time.into()),
            ..Default::default()
        }
    }

    #[test]
    fn spellings_parse() {
        assert_eq!(memory_mb("32G"), Some(32768));
        assert_eq!(memory_mb("500M"), Some(500));
        assert_eq!(memory_mb("2048"), Some(2048));
        assert_eq!(memory_mb("1T"), Some(1 << 20));
        assert_eq!(memory_mb("1.5G"), None);
        assert_eq!(minutes("8:00:00"), Some(Some(480)));
        assert_eq!(minutes("30"), Some(Some(30)));
        assert_eq!(minutes("0:30"), Some(Some(1)));
        assert_eq!(minutes("1-00:00:00"), Some(Some(1440)));
        assert_eq!(minutes("2-12"), Some(Some(3600)));
        assert_eq!(minutes("infinite"), Some(None));
        assert_eq!(minutes("soon"), None);
    }

    #[test]
    fn requests_are_checked_against_the_partition_they_go_to() {
        let parts = [
            part("cpu", true, None, &[(2, 19000, 0)]),
            part("gpu", false, Some(240), &[(8, 64000, 0), (16, 128000, 4)]),
        ];
        assert_eq!(unsatisfiable("a", &ask(2, "4G", 0, "1:00:00"), &[], &parts), None);
        let e = unsatisfiable("expert:sort", &ask(4, "32G", 0, "8:00:00"), &[], &parts).unwrap();
        assert!(
            e.contains("expert:sort asks for cpus=4 memory=32G gpus=0 time=8:00:00")
                && e.contains("partition `cpu`")
                && e.contains("1 node of 2 CPUs, 19000 MB, 0 GPUs")
                && e.contains("`resources`"),
            "{e}"
        );
        let mut gpu = ask(16, "100G", 4, "4:00:00");
        gpu.partition = Some("gpu".into());
        assert_eq!(
            unsatisfiable("a", &gpu, &[], &parts),
            None,
            "the second node shape has all of it"
        );
        gpu.gpus = Some(8);
        assert!(unsatisfiable("a", &gpu, &[], &parts).unwrap().contains("gpus=8"));
        gpu.gpus = Some(4);
        gpu.time = Some("5:00:00".into());
        let e = unsatisfiable("a", &gpu, &[], &parts).unwrap();
        assert!(e.contains("time limit of partition `gpu` (4:00:00)"), "{e}");
        gpu.partition = Some("gpus".into());
        let e = unsatisfiable("a", &gpu, &[], &parts).unwrap();
        assert!(
            e.contains("partition `gpus`, which this cluster does not have (it has: cpu, gpu)"),
            "{e}"
        );
        // A field set by a raw flag is the flag's.
        let big = ask(64, "1G", 0, "1:00:00");
        assert!(unsatisfiable("a", &big, &[], &parts).is_some());
        assert_eq!(
            unsatisfiable("a", &big, &["--cpus-per-task=1".into()], &parts),
            None
        );
    }
}
