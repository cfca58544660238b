//! A real single-node SLURM cluster for a test: Debian's `slurm-wlm`
//! (slurmctld + slurmd) started in the foreground in the test's temp dir,
//! with its own slurm.conf, state and spool directories and ports, on
//! 127.0.0.1, `auth/none` (22.05 still ships it; loopback only), and four
//! fake GPUs (`gres.conf` `File=` entries that are symlinks to
//! `/dev/null`, so jobs see `CUDA_VISIBLE_DEVICES`). Stopped when dropped.
//! Never touches system-wide services. When SLURM is not installed the
//! test fails saying what to install.
//!
//! [`Slurm::start_with_accounting`] adds accounting, so `sacct` answers:
//! a MariaDB server of the test's own (`mariadb-install-db` into the temp
//! dir, 127.0.0.1 on a free port, a user with a throwaway password) and
//! `slurmdbd` (`auth/none`, `accounting_storage/mysql`), with slurmctld's
//! `AccountingStorageType=accounting_storage/slurmdbd` tracking
//! `gres/gpu`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_listen_port, Env};

/// One test cluster.
pub struct Slurm {
    pub dir: PathBuf,
    pub conf: PathBuf,
    pub node: String,
    ctld: Option<Child>,
    slurmd: Option<Child>,
    dbd: Option<Child>,
    mariadb: Option<Child>,
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
        Slurm::start_opts(env, false)
    }

    /// [`Slurm::start`] with accounting: MariaDB and slurmdbd of the
    /// test's own, so `sacct` answers. Panics, naming the packages, when
    /// they are not installed.
    pub fn start_with_accounting(env: &Env) -> Slurm {
        Slurm::start_opts(env, true)
    }

    fn start_opts(env: &Env, accounting: bool) -> Slurm {
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
        if accounting {
            let missing: Vec<&str> = [
                "slurmdbd",
                "mariadbd",
                "mariadb-install-db",
                "mariadb",
                "sacct",
            ]
            .into_iter()
            .filter(|p| find(p).is_none())
            .collect();
            assert!(
                missing.is_empty(),
                "SLURM accounting is not installed ({} missing): the sacct test runs its own \
                 slurmdbd and MariaDB; install them with `apt-get install slurmdbd \
                 mariadb-server` (scripts/setup does)",
                missing.join(", ")
            );
        }
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
                 {accounting}JobCompType=jobcomp/none\n\
                 NodeName={node} NodeAddr=127.0.0.1 CPUs=8 RealMemory=2000 Gres=gpu:a100:4 State=UNKNOWN\n\
                 PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP\n",
                free_listen_port(),
                free_listen_port(),
                accounting = if accounting {
                    let dbd_port = free_listen_port();
                    format!(
                        "AccountingStorageType=accounting_storage/slurmdbd\n\
                         AccountingStorageHost=127.0.0.1\nAccountingStoragePort={dbd_port}\n\
                         AccountingStorageTRES=gres/gpu\n\
                         JobAcctGatherType=jobacct_gather/none\n"
                    )
                } else {
                    "AccountingStorageType=accounting_storage/none\n".to_string()
                },
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
            dbd: None,
            mariadb: None,
        };
        if accounting {
            s.start_accounting(&user);
        }
        s.start_ctld(true);
        s.start_slurmd();
        s.wait_idle();
        s
    }

    /// MariaDB in the temp dir (its own data directory, 127.0.0.1 on a
    /// free port), a `slurm` user for slurmdbd, then slurmdbd, whose
    /// slurmdbd.conf sits beside slurm.conf (where it looks) with mode
    /// 0600, as it requires.
    fn start_accounting(&mut self, user: &str) {
        let d = self.dir.clone();
        let data = d.join("db");
        let out = Command::new(find("mariadb-install-db").expect("installed"))
            .args([
                "--no-defaults",
                &format!("--datadir={}", data.display()),
                &format!("--user={user}"),
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let db_port = free_listen_port();
        let sock = d.join("mariadb.sock");
        self.mariadb = Some(
            Command::new(find("mariadbd").expect("installed"))
                .args([
                    "--no-defaults".to_string(),
                    format!("--datadir={}", data.display()),
                    format!("--socket={}", sock.display()),
                    "--bind-address=127.0.0.1".into(),
                    format!("--port={db_port}"),
                    format!("--user={user}"),
                    format!("--pid-file={}", d.join("mariadb.pid").display()),
                    format!("--log-error={}", d.join("log/mariadb.err").display()),
                    "--innodb-buffer-pool-size=64M".into(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot start mariadbd: {e}")),
        );
        let sql = "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'test-only';
                   GRANT ALL ON *.* TO 'slurm'@'127.0.0.1';
                   CREATE USER 'slurm'@'localhost' IDENTIFIED BY 'test-only';
                   GRANT ALL ON *.* TO 'slurm'@'localhost';";
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let o = Command::new(find("mariadb").expect("installed"))
                .args(["--no-defaults", "-S"])
                .arg(&sock)
                .args(["-u", "root", "-e", sql])
                .output()
                .unwrap();
            if o.status.success() {
                break;
            }
            assert!(
                Instant::now() < end,
                "MariaDB did not answer: {}",
                fs::read_to_string(d.join("log/mariadb.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let conf = fs::read_to_string(&self.conf).unwrap();
        let dbd_port = conf
            .lines()
            .find_map(|l| l.strip_prefix("AccountingStoragePort="))
            .expect("a slurmdbd port")
            .to_string();
        let dbd_conf = d.join("slurmdbd.conf");
        fs::write(
            &dbd_conf,
            format!(
                "AuthType=auth/none\nDbdHost=localhost\nDbdAddr=127.0.0.1\nDbdPort={dbd_port}\n\
                 SlurmUser={user}\nLogFile={d}/log/slurmdbd.log\nPidFile={d}/slurmdbd.pid\n\
                 StorageType=accounting_storage/mysql\nStorageHost=127.0.0.1\n\
                 StoragePort={db_port}\nStorageUser=slurm\nStoragePass=test-only\n\
                 StorageLoc=slurm_acct_db\n",
                d = d.display()
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&dbd_conf, fs::Permissions::from_mode(0o600)).unwrap();
        self.dbd = Some(self.spawn("slurmdbd", &["-D"], "slurmdbd.out"));
        let end = Instant::now() + Duration::from_secs(60);
        let addr: std::net::SocketAddr = format!("127.0.0.1:{dbd_port}").parse().unwrap();
        while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < end,
                "slurmdbd did not listen: {}",
                self.log("slurmdbd.log")
            );
            std::thread::sleep(Duration::from_millis(200));
        }
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
            // Another test's cluster numbers its jobs from 1 too: only
            // this cluster's step daemons (they inherit slurmd's
            // SLURM_CONF).
            let environ = fs::read(e.path().join("environ")).unwrap_or_default();
            let ours = environ
                .split(|b| *b == 0)
                .any(|v| v == format!("SLURM_CONF={}", self.conf.display()).as_bytes());
            if cmd.starts_with(&format!("slurmstepd: [{id}.")) && ours {
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
        for c in [self.dbd.take(), self.mariadb.take()].into_iter().flatten() {
            let mut c = c;
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
