//! A real single-node SLURM cluster for a test: Debian's `slurm-wlm`
//! (slurmctld + slurmd) started in the foreground in the test's temp dir,
//! with its own slurm.conf, state and spool directories and ports, on
//! 127.0.0.1, `auth/none` (22.05 still ships it; loopback only), and four
//! fake GPUs (`gres.conf` `File=` entries that are symlinks to
//! `/dev/null`, so jobs see `CUDA_VISIBLE_DEVICES`). Stopped when dropped.
//! Never touches system-wide services. When SLURM is not installed the
//! test fails saying what to install.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, Env};

/// One test cluster.
pub struct Slurm {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub node: String,
    ctld: Option<Child>,
    slurmd: Option<Child>,
}

fn find(prog: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    let found = path
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/sbin"])
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file());
    found
}

fn user() -> String {
    let o = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn short_hostname() -> String {
    let h = fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    h.trim()
        .split('.')
        .next()
        .unwrap_or("localhost")
        .to_string()
}

impl Slurm {
    /// Start a cluster under `env`'s temp dir and point `env`'s commands
    /// (the daemon included) at it with `SLURM_CONF`. Panics, naming the
    /// package, when SLURM is not installed.
    pub fn start(env: &Env) -> Slurm {
        let missing: Vec<&str> = [
            "slurmctld",
            "slurmd",
            "sbatch",
            "squeue",
            "sinfo",
            "scancel",
        ]
        .into_iter()
        .filter(|p| find(p).is_none())
        .collect();
        assert!(
            missing.is_empty(),
            "SLURM is not installed ({} missing): these tests run a real single-node cluster; \
             install it with `apt-get install slurm-wlm` (scripts/setup does)",
            missing.join(", ")
        );
        let dir = env.path("slurm");
        for d in ["state", "spool", "log", "dev", "jobs"] {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        for i in 0..4 {
            std::os::unix::fs::symlink("/dev/null", dir.join(format!("dev/nvidia{i}"))).unwrap();
        }
        let node = short_hostname();
        let user = user();
        let d = dir.display();
        let conf = dir.join("slurm.conf");
        fs::write(
            &conf,
            format!(
                "ClusterName=tytest\n\
                 SlurmctldHost={node}(127.0.0.1)\n\
                 SlurmUser={user}\nSlurmdUser={user}\n\
                 AuthType=auth/none\nCredType=cred/none\n\
                 SlurmctldPort={}\nSlurmdPort={}\n\
                 StateSaveLocation={d}/state\nSlurmdSpoolDir={d}/spool\n\
                 SlurmctldPidFile={d}/slurmctld.pid\nSlurmdPidFile={d}/slurmd.pid\n\
                 SlurmctldLogFile={d}/log/slurmctld.log\nSlurmdLogFile={d}/log/slurmd.log\n\
                 ProctrackType=proctrack/linuxproc\nTaskPlugin=task/none\n\
                 SwitchType=switch/none\nMpiDefault=none\n\
                 ReturnToService=2\nSlurmdTimeout=10\nMinJobAge=300\n\
                 SchedulerType=sched/backfill\n\
                 SelectType=select/cons_tres\nSelectTypeParameters=CR_Core\n\
                 GresTypes=gpu\nSlurmdParameters=config_overrides\n\
                 AccountingStorageType=accounting_storage/none\nJobCompType=jobcomp/none\n\
                 NodeName={node} NodeAddr=127.0.0.1 CPUs=8 RealMemory=2000 Gres=gpu:a100:4 State=UNKNOWN\n\
                 PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP\n",
                free_port(),
                free_port(),
            ),
        )
        .unwrap();
        fs::write(
            dir.join("gres.conf"),
            format!("NodeName={node} Name=gpu Type=a100 File={d}/dev/nvidia[0-3]\n"),
        )
        .unwrap();
        env.vars
            .borrow_mut()
            .push(("SLURM_CONF".into(), conf.display().to_string()));
        let mut s = Slurm {
            dir,
            conf,
            node,
            ctld: None,
            slurmd: None,
        };
        s.start_ctld(true);
        s.start_slurmd();
        s.wait_idle();
        s
    }

    fn spawn(&self, prog: &str, args: &[&str], log: &str) -> Child {
        Command::new(find(prog).expect("installed"))
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .stdin(Stdio::null())
            .stdout(fs::File::create(self.dir.join("log").join(log)).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {prog}: {e}"))
    }

    /// Start slurmctld in the foreground (`-i`: ignore saved state, for
    /// the first start only).
    pub fn start_ctld(&mut self, fresh: bool) {
        let args: &[&str] = if fresh { &["-D", "-i"] } else { &["-D"] };
        self.ctld = Some(self.spawn("slurmctld", args, "slurmctld.out"));
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            if self.cmd("sinfo", &["-h"]).status.success() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("slurmctld did not answer: {}", self.log("slurmctld.log"));
    }

    /// Kill slurmctld (the controller is unreachable until started again).
    pub fn stop_ctld(&mut self) {
        if let Some(mut c) = self.ctld.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start slurmd in the foreground.
    pub fn start_slurmd(&mut self) {
        self.slurmd = Some(self.spawn("slurmd", &["-D"], "slurmd.out"));
    }

    /// Kill slurmd with SIGKILL, and the step daemons (and job processes)
    /// of `job_pids`, as a node failure would.
    pub fn kill_slurmd(&mut self) {
        if let Some(mut c) = self.slurmd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait until the node is idle (or mixed) and offers its GPUs.
    pub fn wait_idle(&self) {
        let end = Instant::now() + Duration::from_secs(40);
        while Instant::now() < end {
            let o = self.cmd("sinfo", &["-h", "-N", "-o", "%T"]);
            let s = String::from_utf8_lossy(&o.stdout).to_string();
            if s.trim() == "idle" || s.trim() == "mixed" || s.trim() == "allocated" {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "the test SLURM node never became idle: {}\n{}",
            self.log("slurmctld.log"),
            self.log("slurmd.log")
        );
    }

    /// Run a SLURM client command against this cluster.
    pub fn cmd(&self, prog: &str, args: &[&str]) -> std::process::Output {
        Command::new(find(prog).expect("installed"))
            .args(args)
            .env("SLURM_CONF", &self.conf)
            .output()
            .unwrap()
    }

    /// A log file of the cluster.
    pub fn log(&self, name: &str) -> String {
        fs::read_to_string(self.dir.join("log").join(name)).unwrap_or_default()
    }

    /// The directory given to `cluster add --dir` (job outputs).
    pub fn jobs_dir(&self) -> String {
        self.dir.join("jobs").display().to_string()
    }

    /// The processes whose command line mentions SLURM job `id`'s step
    /// daemons (`slurmstepd: [ID.`), with their descendants: what a node
    /// failure takes down. Found through /proc, by pid.
    pub fn step_pids(&self, id: &str) -> Vec<i32> {
        let mut steps = Vec::new();
        let mut parent: Vec<(i32, i32)> = Vec::new();
        for e in fs::read_dir("/proc").unwrap().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let cmd = fs::read(e.path().join("cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.starts_with(&format!("slurmstepd: [{id}.")) {
                steps.push(pid);
            }
            if let Ok(stat) = fs::read_to_string(e.path().join("stat")) {
                if let Some(rest) = stat.rsplit(')').next() {
                    let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok());
                    if let Some(pp) = ppid {
                        parent.push((pid, pp));
                    }
                }
            }
        }
        let mut all = steps.clone();
        let mut i = 0;
        while i < all.len() {
            let p = all[i];
            for (c, pp) in &parent {
                if *pp == p && !all.contains(c) {
                    all.push(*c);
                }
            }
            i += 1;
        }
        all
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        if self.ctld.is_some() {
            // Jobs still running end with the cluster.
            // (slurmd must still run to stop their step daemons: wait.)
            let _ = self.cmd("scancel", &["--partition=debug"]);
            let end = Instant::now() + Duration::from_secs(15);
            while Instant::now() < end {
                let o = self.cmd("squeue", &["-h", "-t", "running,completing", "-o", "%i"]);
                if !o.status.success() || o.stdout.iter().all(|b| b.is_ascii_whitespace()) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        self.kill_slurmd();
        self.stop_ctld();
    }
}
