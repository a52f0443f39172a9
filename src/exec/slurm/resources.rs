//! What a step asks of Slurm: its kind's defaults (declared with the kind), overridden by the manifest's
//! `resources` block (which reaches the step as `settings.resources`, outside its key),
//! rendered as sbatch flags.

use serde_json::Value as Json;

use crate::exec::kind::{JobDefaults, Kind};
use crate::store::StepSpec;

#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resources {
    pub gpus: Option<u64>,
    pub cpus: Option<u64>,
    /// As sbatch spells it ("16G", "500M").
    pub memory: Option<String>,
    /// As sbatch spells it ("4:00:00", "1-00:00:00").
    pub time: Option<String>,
    pub partition: Option<String>,
    pub account: Option<String>,
    /// Extra sbatch flags, passed as given, last (so they override ours).
    pub sbatch: Vec<String>,
}

impl Resources {
    /// The kind's defaults (`kind`: its declaration, when this build has one), then
    /// whatever the manifest set for this step.
    pub fn for_step(spec: &StepSpec, kind: Option<&Kind>, device: &str) -> Resources {
        let d = kind.map_or(JobDefaults::OTHER, |k| k.job_defaults(&spec.params));
        let mut r = Resources {
            gpus: Some(if device.starts_with("cuda") { d.gpus } else { 0 }),
            cpus: Some(d.cpus),
            memory: Some(d.memory.into()),
            time: Some(d.time.into()),
            ..Default::default()
        };
        if let Some(m) = spec.settings.get("resources") {
            r.overlay(m);
        }
        r
    }

    fn overlay(&mut self, m: &Json) {
        let int = |k: &str| m.get(k).and_then(Json::as_u64);
        let text = |k: &str| m.get(k).and_then(Json::as_str).map(String::from);
        if let Some(v) = int("gpus") {
            self.gpus = Some(v);
        }
        if let Some(v) = int("cpus") {
            self.cpus = Some(v);
        }
        self.memory = text("memory").or(self.memory.take());
        self.time = text("time").or(self.time.take());
        self.partition = text("partition").or(self.partition.take());
        self.account = text("account").or(self.account.take());
        if let Some(list) = m.get("sbatch").and_then(Json::as_array) {
            self.sbatch = list.iter().filter_map(|v| v.as_str().map(String::from)).collect();
        }
    }

    /// sbatch flags, in a fixed order (they also group steps into arrays).
    pub fn sbatch_args(&self) -> Vec<String> {
        let mut a = vec![];
        if let Some(g) = self.gpus.filter(|&g| g > 0) {
            a.push(format!("--gres=gpu:{g}"));
        }
        if let Some(c) = self.cpus {
            a.push(format!("--cpus-per-task={c}"));
        }
        if let Some(m) = &self.memory {
            a.push(format!("--mem={m}"));
        }
        if let Some(t) = &self.time {
            a.push(format!("--time={t}"));
        }
        if let Some(p) = &self.partition {
            a.push(format!("--partition={p}"));
        }
        if let Some(acc) = &self.account {
            a.push(format!("--account={acc}"));
        }
        a.extend(self.sbatch.iter().cloned());
        a
    }

    /// The memory request doubled, for the retry of a job that ran out of memory.
    /// None when the request is not in a form we can scale (then it is kept).
    pub fn doubled_memory(&self) -> Option<String> {
        let m = self.memory.as_deref()?;
        let split = m.find(|c: char| !c.is_ascii_digit()).unwrap_or(m.len());
        let (num, unit) = m.split_at(split);
        let n: u64 = num.parse().ok()?;
        if !matches!(unit, "" | "K" | "M" | "G" | "T") {
            return None;
        }
        Some(format!("{}{unit}", n * 2))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(kind: &str, params: Json, settings: Json) -> StepSpec {
        StepSpec {
            key: crate::store::Key([0; 32]),
            id: format!("{kind}:x"),
            kind: kind.into(),
            name: "x".into(),
            version: 1,
            params,
            settings,
            inputs: vec![],
            externals: vec![],
        }
    }

    const TRAINER: Kind = Kind::new("trainer", 1, 0, JobDefaults::new(1, 4, "32G", "8:00:00"));

    #[test]
    fn kind_defaults_then_manifest_overrides() {
        let s = spec(
            "trainer",
            serde_json::json!({}),
            serde_json::json!({"resources": {"memory": "500M", "partition": "gpu", "sbatch": ["--qos=low"]}}),
        );
        let r = Resources::for_step(&s, Some(&TRAINER), "cuda");
        assert_eq!(
            r.sbatch_args(),
            [
                "--gres=gpu:1",
                "--cpus-per-task=4",
                "--mem=500M",
                "--time=8:00:00",
                "--partition=gpu",
                "--qos=low"
            ]
        );
        // A CPU run asks for no GPU unless the manifest says so.
        assert!(!Resources::for_step(&s, Some(&TRAINER), "cpu").sbatch_args()[0].starts_with("--gres"));
        let g = spec(
            "trainer",
            serde_json::json!({}),
            serde_json::json!({"resources": {"gpus": 2}}),
        );
        assert_eq!(
            Resources::for_step(&g, Some(&TRAINER), "cpu").sbatch_args()[0],
            "--gres=gpu:2"
        );
        // A kind this build does not declare gets the modest defaults.
        let other = Resources::for_step(
            &spec("other", serde_json::json!({}), serde_json::json!({})),
            None,
            "cuda",
        );
        assert_eq!(
            other.sbatch_args(),
            ["--cpus-per-task=1", "--mem=4G", "--time=2:00:00"]
        );
    }

    #[test]
    fn a_kind_may_choose_its_defaults_by_its_parameters() {
        let kind = Kind {
            resources: crate::exec::kind::JobResources::ByParams(|p| {
                let gpus = u64::from(p.get("init").is_some_and(|v| !v.is_null()));
                JobDefaults::new(gpus, 2, "4G", "2:00:00")
            }),
            ..Kind::new("pretrainer", 1, 0, JobDefaults::OTHER)
        };
        let hub = spec(
            "pretrainer",
            serde_json::json!({"hub": "t5"}),
            serde_json::json!({}),
        );
        let init = spec(
            "pretrainer",
            serde_json::json!({"init": {"layers": 2}}),
            serde_json::json!({}),
        );
        assert_eq!(Resources::for_step(&hub, Some(&kind), "cuda").gpus, Some(0));
        assert_eq!(Resources::for_step(&init, Some(&kind), "cuda").gpus, Some(1));
    }

    #[test]
    fn memory_doubles_for_an_out_of_memory_retry() {
        let mut r = Resources {
            memory: Some("16G".into()),
            ..Default::default()
        };
        assert_eq!(r.doubled_memory().as_deref(), Some("32G"));
        r.memory = Some("1.5G".into());
        assert_eq!(r.doubled_memory(), None);
    }
}
