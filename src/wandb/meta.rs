//! `wandb-metadata.json` from EnvironmentRecords, the way wandb-core builds
//! it: every record is turned into its protobuf-JSON form (the field's
//! `json_name` from the 0.31.0 descriptor, default values left out, 64-bit
//! integers as strings, timestamps as RFC 3339 with 0, 3, 6 or 9 fraction
//! digits) and the records are merged in file order as `proto.Merge` does
//! (scalars replaced, repeated fields appended, map entries replaced per
//! key, messages merged field by field).
//!
//! Pure functions of the records; no I/O.

use std::collections::BTreeMap;

use super::proto::{self, EnvironmentRecord, Timestamp};
use super::value::Value;

/// An EnvironmentRecord in protobuf-JSON form.
pub fn environment_json(e: &EnvironmentRecord) -> BTreeMap<String, Value> {
    let mut m = Obj::default();
    m.str("os", &e.os);
    m.str("python", &e.python);
    if let Some(t) = &e.started_at {
        m.0.insert("startedAt".into(), Value::String(timestamp(t)));
    }
    m.str("docker", &e.docker);
    if !e.args.is_empty() {
        m.0.insert(
            "args".into(),
            Value::Array(e.args.iter().cloned().map(Value::String).collect()),
        );
    }
    m.str("program", &e.program);
    m.str("codePath", &e.code_path);
    m.str("codePathLocal", &e.code_path_local);
    if let Some(g) = &e.git {
        let mut o = Obj::default();
        o.str("remote", &g.remote_url);
        o.str("commit", &g.commit);
        m.0.insert("git".into(), o.into());
    }
    m.str("email", &e.email);
    m.str("root", &e.root);
    m.str("host", &e.host);
    m.str("username", &e.username);
    m.str("executable", &e.executable);
    m.str("colab", &e.colab);
    m.u32("cpu_count", e.cpu_count);
    m.u32("cpu_count_logical", e.cpu_count_logical);
    m.str("gpu", &e.gpu_type);
    m.u32("gpu_count", e.gpu_count);
    if !e.disk.is_empty() {
        let disks = e
            .disk
            .iter()
            .map(|(k, d)| {
                let mut o = Obj::default();
                o.u64("total", d.total);
                o.u64("used", d.used);
                (k.clone(), o.into())
            })
            .collect();
        m.0.insert("disk".into(), Value::Object(disks));
    }
    if let Some(x) = &e.memory {
        let mut o = Obj::default();
        o.u64("total", x.total);
        m.0.insert("memory".into(), o.into());
    }
    if let Some(x) = &e.cpu {
        let mut o = Obj::default();
        o.u32("count", x.count);
        o.u32("countLogical", x.count_logical);
        o.str("model", &x.model);
        m.0.insert("cpu".into(), o.into());
    }
    if let Some(x) = &e.apple {
        let mut o = Obj::default();
        o.str("name", &x.name);
        o.u32("ecpuCores", x.ecpu_cores);
        o.u32("pcpuCores", x.pcpu_cores);
        o.u32("gpuCores", x.gpu_cores);
        o.u32("memoryGb", x.memory_gb);
        o.u64("swapTotalBytes", x.swap_total_bytes);
        o.u64("ramTotalBytes", x.ram_total_bytes);
        o.str("macModel", &x.mac_model);
        m.0.insert("apple".into(), o.into());
    }
    if !e.gpu_nvidia.is_empty() {
        let gpus = e.gpu_nvidia.iter().map(nvidia).collect();
        m.0.insert("gpu_nvidia".into(), Value::Array(gpus));
    }
    m.str("cudaVersion", &e.cuda_version);
    if !e.gpu_amd.is_empty() {
        let gpus = e.gpu_amd.iter().map(amd).collect();
        m.0.insert("gpu_amd".into(), Value::Array(gpus));
    }
    if !e.slurm.is_empty() {
        let s = e
            .slurm
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect();
        m.0.insert("slurm".into(), Value::Object(s));
    }
    if let Some(x) = &e.trainium {
        let mut o = Obj::default();
        o.str("name", &x.name);
        o.str("vendor", &x.vendor);
        o.u32("neuronDeviceCount", x.neuron_device_count);
        o.u32("neuroncorePerDeviceCount", x.neuroncore_per_device_count);
        m.0.insert("trainium".into(), o.into());
    }
    if let Some(x) = &e.tpu {
        let mut o = Obj::default();
        o.str("name", &x.name);
        o.u32("hbmGib", x.hbm_gib);
        o.u32("devicesPerChip", x.devices_per_chip);
        o.u32("count", x.count);
        m.0.insert("tpu".into(), o.into());
    }
    if let Some(x) = &e.coreweave {
        let mut o = Obj::default();
        o.str("clusterName", &x.cluster_name);
        o.str("orgId", &x.org_id);
        o.str("region", &x.region);
        m.0.insert("coreweave".into(), o.into());
    }
    m.str("writerId", &e.writer_id);
    m.0
}

fn nvidia(g: &proto::GpuNvidiaInfo) -> Value {
    let mut o = Obj::default();
    o.str("name", &g.name);
    o.u64("memoryTotal", g.memory_total);
    o.u32("cudaCores", g.cuda_cores);
    o.str("architecture", &g.architecture);
    o.str("uuid", &g.uuid);
    o.str("pciBusId", &g.pci_bus_id);
    o.u32("numaNode", g.numa_node);
    o.into()
}

fn amd(g: &proto::GpuAmdInfo) -> Value {
    let mut o = Obj::default();
    for (k, v) in [
        ("id", &g.id),
        ("uniqueId", &g.unique_id),
        ("vbiosVersion", &g.vbios_version),
        ("performanceLevel", &g.performance_level),
        ("gpuOverdrive", &g.gpu_overdrive),
        ("gpuMemoryOverdrive", &g.gpu_memory_overdrive),
        ("maxPower", &g.max_power),
        ("series", &g.series),
        ("model", &g.model),
        ("vendor", &g.vendor),
        ("sku", &g.sku),
        ("sclkRange", &g.sclk_range),
        ("mclkRange", &g.mclk_range),
    ] {
        o.str(k, v);
    }
    o.into()
}

/// Merges `new` into `acc` as `proto.Merge` merges two EnvironmentRecords.
pub fn merge(acc: &mut BTreeMap<String, Value>, new: BTreeMap<String, Value>) {
    for (k, v) in new {
        // maps: entries replaced per key; messages: merged; repeated: appended
        let is_map = k == "disk" || k == "slurm";
        match (acc.get_mut(&k), v) {
            (Some(Value::Object(a)), Value::Object(b)) if is_map => a.extend(b),
            (Some(Value::Object(a)), Value::Object(b)) => merge(a, b),
            (Some(Value::Array(a)), Value::Array(b)) => a.extend(b),
            (_, v) => {
                acc.insert(k, v);
            }
        }
    }
}

/// A `google.protobuf.Timestamp` as protobuf-JSON writes it: RFC 3339 in
/// UTC, the fraction in 0, 3, 6 or 9 digits (the fewest that are exact).
pub fn timestamp(t: &Timestamp) -> String {
    let secs = u64::try_from(t.seconds).unwrap_or(0);
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let base = humantime::format_rfc3339_seconds(at).to_string();
    let base = base.trim_end_matches('Z');
    let n = t.nanos.clamp(0, 999_999_999);
    let frac = if n == 0 {
        String::new()
    } else if n % 1_000_000 == 0 {
        format!(".{:03}", n / 1_000_000)
    } else if n % 1_000 == 0 {
        format!(".{:06}", n / 1_000)
    } else {
        format!(".{n:09}")
    };
    format!("{base}{frac}Z")
}

/// An object under construction, leaving out default values.
#[derive(Default)]
struct Obj(BTreeMap<String, Value>);

impl Obj {
    fn str(&mut self, k: &str, v: &str) {
        if !v.is_empty() {
            self.0.insert(k.into(), Value::String(v.into()));
        }
    }
    fn u32(&mut self, k: &str, v: u32) {
        if v != 0 {
            self.0.insert(k.into(), Value::Int(i64::from(v)));
        }
    }
    /// 64-bit integers are strings in protobuf-JSON.
    fn u64(&mut self, k: &str, v: u64) {
        if v != 0 {
            self.0.insert(k.into(), Value::String(v.to_string()));
        }
    }
}

impl From<Obj> for Value {
    fn from(o: Obj) -> Value {
        Value::Object(o.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_every_digit() {
        let t = |seconds, nanos| timestamp(&Timestamp { seconds, nanos });
        assert_eq!(t(1_796_582_957, 666_630_000), "2026-12-06T18:49:17.666630Z");
        assert_eq!(t(1_796_582_957, 0), "2026-12-06T18:49:17Z");
        assert_eq!(t(1_796_582_957, 5_000_000), "2026-12-06T18:49:17.005Z");
        assert_eq!(
            t(1_796_582_957, 123_456_789),
            "2026-12-06T18:49:17.123456789Z"
        );
    }

    #[test]
    fn records_merge_like_proto_merge() {
        let a = EnvironmentRecord {
            os: "Linux".into(),
            cpu_count: 2,
            writer_id: "w".into(),
            ..Default::default()
        };
        let mut b = EnvironmentRecord {
            os: String::new(),
            gpu_count: 1,
            writer_id: "w".into(),
            ..Default::default()
        };
        b.disk
            .insert("/".into(), proto::DiskInfo { total: 10, used: 0 });
        let mut acc = environment_json(&a);
        merge(&mut acc, environment_json(&b));
        let v = Value::Object(acc).to_extended_json();
        assert_eq!(
            v,
            r#"{"cpu_count":2,"disk":{"/":{"total":"10"}},"gpu_count":1,"os":"Linux","writerId":"w"}"#
        );
    }
}
