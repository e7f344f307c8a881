//! A cgroup per cell, under the node's own cgroup, on cgroup v2 or v1.
//!
//! Written by hand over the cgroup filesystem rather than through `cgroups-rs`: its 0.3 line
//! reads cgroup v2 from the fixed path `/sys/fs/cgroup` (so it can neither be pointed at a
//! cgroup2 mounted elsewhere, as on this project's CI host, nor at a test tree) and panics or
//! ignores errors in places, and its 0.4 line brings a D-Bus stack (`zbus`). A cell needs six
//! files per version, each write here returns a typed error naming the file.
//!
//! Where the cells go: v2 allows controllers in a cgroup's children only while the cgroup
//! itself holds no process, so the node moves itself into `<own>/tern-node` if it must and
//! creates cells as `<own>/tern-cells/<name>`. v1 has one tree per controller; each cell gets
//! `<own in that tree>/tern-cells/<name>` in every tree. Cells stay inside the node's cgroup,
//! so whatever limits the node is under also bounds its cells.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::limits::{CellLimits, CgroupVersion, Controller};

/// The controllers every cell is limited or measured by.
const CONTROLLERS: [Controller; 4] = [
    Controller::Cpu,
    Controller::CpuAcct,
    Controller::Memory,
    Controller::Pids,
];
/// The v2 controllers enabled for cells (v2 has no `cpuacct`: usage is in `cpu.stat`).
const V2_SUBTREE: &str = "+cpu +memory +pids";
const CELLS_DIR: &str = "tern-cells";
const NODE_LEAF: &str = "tern-node";

/// The cgroup tree(s) cells are created in: for each controller, the directory of the node's
/// own cgroup (all the same directory on v2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hierarchy {
    version: CgroupVersion,
    dirs: BTreeMap<Controller, PathBuf>,
}

impl Hierarchy {
    /// The host's hierarchy as this process sees it: cgroup v2 if its cgroup there offers the
    /// `cpu`, `memory` and `pids` controllers, else v1 if each of `cpu`, `cpuacct`, `memory`
    /// and `pids` is mounted. The error names what is missing.
    pub fn detect() -> Result<Self, Error> {
        let read = |p: &str| std::fs::read_to_string(p).map_err(Error::cgroup(p));
        let mountinfo = read("/proc/self/mountinfo")?;
        let own = read("/proc/self/cgroup")?;
        Self::from_proc(&mountinfo, &own, |dir| {
            std::fs::read_to_string(dir.join("cgroup.controllers")).ok()
        })
    }

    /// [`Hierarchy::detect`] from the text of `/proc/self/mountinfo` and `/proc/self/cgroup`,
    /// with `controllers_of` reading a v2 directory's `cgroup.controllers`.
    pub fn from_proc(
        mountinfo: &str,
        own_cgroup: &str,
        controllers_of: impl Fn(&Path) -> Option<String>,
    ) -> Result<Self, Error> {
        let mounts: Vec<Mount> = mountinfo.lines().filter_map(Mount::parse).collect();
        // Own path per v1 controller, and the v2 path ("0::/path").
        let mut v1_paths: BTreeMap<&str, &str> = BTreeMap::new();
        let mut v2_path = None;
        for line in own_cgroup.lines() {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(names), Some(path)) = (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if id == "0" && names.is_empty() {
                v2_path = Some(path);
            } else {
                for name in names.split(',') {
                    v1_paths.insert(name, path);
                }
            }
        }
        if let Some(path) = v2_path
            && let Some(m) = mounts.iter().find(|m| m.fs_type == "cgroup2")
            && let Some(dir) = m.dir_of(path)
        {
            let offered = controllers_of(&dir).unwrap_or_default();
            let offered: Vec<&str> = offered.split_whitespace().collect();
            if ["cpu", "memory", "pids"]
                .iter()
                .all(|c| offered.contains(c))
            {
                return Ok(Self::v2_at(dir));
            }
        }
        let mut dirs = BTreeMap::new();
        for controller in CONTROLLERS {
            let name = controller.name();
            let mount = mounts
                .iter()
                .find(|m| m.fs_type == "cgroup" && m.super_opts.split(',').any(|o| o == name))
                .ok_or_else(|| Error::NoCgroup {
                    controller: name,
                    detail: "no cgroup2 mount offering cpu, memory and pids to this process, \
                             and no cgroup v1 mount of it"
                        .into(),
                })?;
            let own = v1_paths.get(name).copied().unwrap_or("/");
            let dir = mount.dir_of(own).ok_or_else(|| Error::NoCgroup {
                controller: name,
                detail: format!("this process's cgroup {own} is outside the mount's root"),
            })?;
            dirs.insert(controller, dir);
        }
        Ok(Self {
            version: CgroupVersion::V1,
            dirs,
        })
    }

    /// A cgroup v2 hierarchy whose node cgroup is `dir` (a real one, or a test tree).
    pub fn v2_at(dir: PathBuf) -> Self {
        Self {
            version: CgroupVersion::V2,
            dirs: CONTROLLERS.iter().map(|c| (*c, dir.clone())).collect(),
        }
    }

    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// The node cgroup's directory for `controller`.
    pub fn dir(&self, controller: Controller) -> Option<&Path> {
        self.dirs.get(&controller).map(PathBuf::as_path)
    }

    /// Gets the hierarchy ready for cells before the first one starts: on v2, enables the
    /// cells' controllers below the node's cgroup (moving the node into a leaf of its own if
    /// it must) and creates `tern-cells`, so a cell spawned in the node's cgroup can be moved
    /// into its own; on both, removes the empty cgroups of cells of an earlier run. Returns how
    /// many were removed.
    pub fn prepare(&self) -> Result<usize, Error> {
        if self.version == CgroupVersion::V2 {
            let own = &self.dirs[&Controller::Cpu];
            enable_v2_controllers(own)?;
            let cells = own.join(CELLS_DIR);
            make_dir(&cells)?;
            write(&cells.join("cgroup.subtree_control"), V2_SUBTREE)?;
        }
        let mut removed = 0;
        let mut seen = std::collections::BTreeSet::new();
        for own in self.dirs.values() {
            let Ok(entries) = std::fs::read_dir(own.join(CELLS_DIR)) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                // Cells of a node still running on this host (or in this process) are its
                // own, even between their cgroup's creation and their process's arrival.
                if owner_alive(&entry.file_name().to_string_lossy()) {
                    continue;
                }
                // A cell of an earlier run: empty, it goes; still busy, it stays.
                if path.is_dir()
                    && std::fs::remove_dir(&path).is_ok()
                    && seen.insert(entry.file_name())
                {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// The handle of cell `name`'s cgroup, without creating it.
    pub fn cell(&self, name: &str) -> Result<CellCgroup, Error> {
        check_name(name)?;
        let dirs = match self.version {
            CgroupVersion::V2 => {
                let dir = self.dirs[&Controller::Cpu].join(CELLS_DIR).join(name);
                CONTROLLERS.iter().map(|c| (*c, dir.clone())).collect()
            }
            CgroupVersion::V1 => self
                .dirs
                .iter()
                .map(|(c, own)| (*c, own.join(CELLS_DIR).join(name)))
                .collect(),
        };
        Ok(CellCgroup {
            version: self.version,
            dirs,
        })
    }

    /// Creates (or reuses) the cgroup of cell `name` and gives it `limits`.
    pub fn create(&self, name: &str, limits: &CellLimits) -> Result<CellCgroup, Error> {
        check_name(name)?;
        limits.validate()?;
        let cell = match self.version {
            CgroupVersion::V2 => {
                let own = &self.dirs[&Controller::Cpu];
                enable_v2_controllers(own)?;
                let cells = own.join(CELLS_DIR);
                make_dir(&cells)?;
                write(&cells.join("cgroup.subtree_control"), V2_SUBTREE)?;
                let dir = cells.join(name);
                make_dir(&dir)?;
                CellCgroup {
                    version: self.version,
                    dirs: CONTROLLERS.iter().map(|c| (*c, dir.clone())).collect(),
                }
            }
            CgroupVersion::V1 => {
                let mut dirs = BTreeMap::new();
                for (controller, own) in &self.dirs {
                    let dir = own.join(CELLS_DIR).join(name);
                    std::fs::create_dir_all(&dir).map_err(Error::cgroup(&dir))?;
                    dirs.insert(*controller, dir);
                }
                CellCgroup {
                    version: self.version,
                    dirs,
                }
            }
        };
        cell.apply(limits)?;
        Ok(cell)
    }
}

/// One cell's cgroup (a handle: its directories).
#[derive(Clone, Debug)]
pub struct CellCgroup {
    version: CgroupVersion,
    dirs: BTreeMap<Controller, PathBuf>,
}

impl CellCgroup {
    /// Sets the cell's limits (running processes keep running under the new ones).
    pub fn apply(&self, limits: &CellLimits) -> Result<(), Error> {
        limits.validate()?;
        for (controller, file, value) in limits.files(self.version) {
            write(&self.dirs[&controller].join(file), &value)?;
        }
        // No swap: memory.max must bound what the cell takes from the host. The file exists
        // only where the kernel accounts swap (v1 has no per-cgroup swap limit without
        // memsw accounting, and a limit of its own is not needed for a host without swap).
        if self.version == CgroupVersion::V2 {
            let swap = self.dirs[&Controller::Memory].join("memory.swap.max");
            if swap.exists() {
                write(&swap, "0")?;
            }
        }
        Ok(())
    }

    /// Moves process `pid` (all its threads) into the cell.
    pub fn add_process(&self, pid: u32) -> Result<(), Error> {
        for dir in self.distinct_dirs() {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The processes in the cell.
    pub fn processes(&self) -> Result<Vec<u32>, Error> {
        let path = self.dirs[&Controller::Pids].join("cgroup.procs");
        let text = std::fs::read_to_string(&path).map_err(Error::cgroup(&path))?;
        Ok(text.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Sends SIGKILL to every process in the cell (v2: `cgroup.kill`, which also catches a
    /// process forked meanwhile). The cell's first process inside is its pid namespace's init,
    /// so its death takes every other process of the namespace with it.
    pub fn kill_all(&self) -> Result<(), Error> {
        if self.version == CgroupVersion::V2 {
            let kill = self.dirs[&Controller::Pids].join("cgroup.kill");
            if kill.exists() {
                return write(&kill, "1");
            }
        }
        let own = std::process::id();
        let listed = match self.processes() {
            Ok(listed) => listed,
            // Never created, or removed already: nothing to kill.
            Err(Error::Cgroup { source, .. }) if source.kind() == ErrorKind::NotFound => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        for pid in listed {
            // 0 (a task reaped while the list was printed) would mean this process group,
            // 1 the host's init: neither is a cell's.
            if pid <= 1 || pid == own {
                continue;
            }
            let Ok(pid) = i32::try_from(pid) else {
                continue;
            };
            // Gone already (ESRCH) is what was wanted.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        Ok(())
    }

    /// CPU time the cell's processes have used, in microseconds.
    pub fn cpu_usage_us(&self) -> Result<u64, Error> {
        match self.version {
            CgroupVersion::V2 => self.stat(Controller::Cpu, "cpu.stat", "usage_usec"),
            CgroupVersion::V1 => {
                let path = self.dirs[&Controller::CpuAcct].join("cpuacct.usage");
                let text = std::fs::read_to_string(&path).map_err(Error::cgroup(&path))?;
                Ok(text.trim().parse::<u64>().unwrap_or(0) / 1000)
            }
        }
    }

    /// How many times the kernel killed a process of the cell for memory.
    pub fn oom_kills(&self) -> Result<u64, Error> {
        match self.version {
            CgroupVersion::V2 => self.stat(Controller::Memory, "memory.events", "oom_kill"),
            CgroupVersion::V1 => self.stat(Controller::Memory, "memory.oom_control", "oom_kill"),
        }
    }

    /// The directory of the cell's cgroup for `controller`.
    pub fn dir(&self, controller: Controller) -> &Path {
        &self.dirs[&controller]
    }

    /// Removes the cgroup; its processes must have ended.
    pub fn remove(self) -> Result<(), Error> {
        for dir in self.distinct_dirs() {
            match std::fs::remove_dir(dir) {
                Err(e) if e.kind() != ErrorKind::NotFound => {
                    return Err(Error::Cgroup {
                        path: dir.clone(),
                        source: e,
                    });
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A `key value` line of a flat-keyed file (0 if the key is absent).
    fn stat(&self, controller: Controller, file: &str, key: &str) -> Result<u64, Error> {
        let path = self.dirs[&controller].join(file);
        let text = std::fs::read_to_string(&path).map_err(Error::cgroup(&path))?;
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
            .unwrap_or(0))
    }

    fn distinct_dirs(&self) -> Vec<&PathBuf> {
        let mut dirs: Vec<&PathBuf> = self.dirs.values().collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }
}

/// Enables the cells' controllers below the node's own v2 cgroup. The kernel refuses that
/// (`EBUSY`) while the cgroup itself holds processes: then this process moves into a leaf of
/// its own first.
fn enable_v2_controllers(own: &Path) -> Result<(), Error> {
    let control = own.join("cgroup.subtree_control");
    match std::fs::write(&control, V2_SUBTREE) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            let leaf = own.join(NODE_LEAF);
            make_dir(&leaf)?;
            write(&leaf.join("cgroup.procs"), &std::process::id().to_string())?;
            write(&control, V2_SUBTREE)
        }
        Err(e) => Err(Error::Cgroup {
            path: control,
            source: e,
        }),
    }
}

/// Whether the node that named cell `name` (`n<pid>_…`, as tern-isolator names cells) is a
/// process still running here. Names of another form have no known owner.
fn owner_alive(name: &str) -> bool {
    name.strip_prefix('n')
        .and_then(|rest| rest.split_once('_'))
        .and_then(|(pid, _)| pid.parse::<u32>().ok())
        .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists())
}

fn check_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(Error::BadName(name.to_owned()))
    }
}

fn make_dir(dir: &Path) -> Result<(), Error> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() != ErrorKind::AlreadyExists => Err(Error::Cgroup {
            path: dir.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn write(path: &Path, value: &str) -> Result<(), Error> {
    std::fs::write(path, value).map_err(Error::cgroup(path))
}

/// One line of `/proc/self/mountinfo`.
struct Mount<'a> {
    /// The directory of the filesystem mounted here (the root of the hierarchy for a cgroup
    /// mounted whole, a subdirectory for a bind mount or a cgroup namespace).
    root: &'a str,
    mount_point: &'a str,
    fs_type: &'a str,
    super_opts: &'a str,
}

impl<'a> Mount<'a> {
    fn parse(line: &'a str) -> Option<Self> {
        let (left, right) = line.split_once(" - ")?;
        let left: Vec<&str> = left.split(' ').collect();
        let mut right = right.split(' ');
        Some(Self {
            root: left.get(3)?,
            mount_point: left.get(4)?,
            fs_type: right.next()?,
            super_opts: right.nth(1)?,
        })
    }

    /// Where cgroup `path` (as `/proc/self/cgroup` gives it, from the hierarchy's root) is
    /// under this mount; `None` if the mount does not show it.
    fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let rest = if self.root == "/" {
            path
        } else {
            path.strip_prefix(self.root)?
        };
        Some(Path::new(self.mount_point).join(rest.trim_start_matches('/')))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::limits::CpuMax;

    /// This project's CI host: v1 controllers mounted one per tree, a cgroup2 mount without
    /// controllers, the node's memory cgroup below the root.
    const MOUNTINFO_V1: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
    const OWN_V1: &str = "8:pids:/\n4:memory:/api/x\n2:cpuacct:/\n1:cpu:/\n0::/\n";

    #[test]
    fn a_v1_host_is_found_with_the_nodes_own_cgroup_per_controller() {
        let h = Hierarchy::from_proc(MOUNTINFO_V1, OWN_V1, |_| Some(String::new())).unwrap();
        assert_eq!(h.version(), CgroupVersion::V1);
        assert_eq!(
            h.dir(Controller::Memory).unwrap(),
            Path::new("/sys/fs/cgroup/memory/api/x")
        );
        assert_eq!(
            h.dir(Controller::Cpu).unwrap(),
            Path::new("/sys/fs/cgroup/cpu")
        );
    }

    #[test]
    fn a_v2_mount_is_used_when_it_offers_the_controllers_and_v1_is_not_needed() {
        let mountinfo = "40 1 0:30 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let h = Hierarchy::from_proc(mountinfo, "0::/system.slice/tern.service\n", |dir| {
            assert_eq!(dir, Path::new("/sys/fs/cgroup/system.slice/tern.service"));
            Some("cpuset cpu io memory pids\n".into())
        })
        .unwrap();
        assert_eq!(h.version(), CgroupVersion::V2);
        // Without the controllers, and no v1 either: an error naming the first missing one.
        match Hierarchy::from_proc(mountinfo, "0::/\n", |_| Some("cpu io\n".into())) {
            Err(Error::NoCgroup { controller, .. }) => assert_eq!(controller, "cpu"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_mount_of_a_subtree_maps_paths_below_its_root() {
        let mountinfo = "40 1 0:30 /kubepods /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let h = Hierarchy::from_proc(mountinfo, "0::/kubepods/pod1\n", |_| {
            Some("cpu memory pids".into())
        })
        .unwrap();
        assert_eq!(
            h.dir(Controller::Pids).unwrap(),
            Path::new("/sys/fs/cgroup/pod1")
        );
    }

    #[test]
    fn prepare_removes_empty_cells_of_earlier_runs_but_not_those_of_running_nodes() {
        let tree = tempfile::tempdir().unwrap();
        let h = Hierarchy::v2_at(tree.path().to_owned());
        let cells = tree.path().join("tern-cells");
        let own = format!("n{}_0_acme-0", std::process::id());
        for name in [own.as_str(), "n4294967295_0_acme-0", "acme-0"] {
            std::fs::create_dir_all(cells.join(name)).unwrap();
        }
        assert_eq!(h.prepare().unwrap(), 2);
        assert!(cells.join(&own).is_dir(), "a running node's cell stays");
        assert!(!cells.join("acme-0").exists());
    }

    /// cgroup v2 against a test tree: the machine this runs on has no cgroup2 controllers.
    #[test]
    fn a_v2_cell_is_created_below_the_node_with_its_controllers_and_limits() {
        let tree = tempfile::tempdir().unwrap();
        let h = Hierarchy::v2_at(tree.path().to_owned());
        // The kernel creates memory.swap.max where it accounts swap.
        std::fs::create_dir_all(tree.path().join("tern-cells/acme")).unwrap();
        std::fs::write(tree.path().join("tern-cells/acme/memory.swap.max"), "max").unwrap();
        let limits = CellLimits {
            cpu_weight: 250,
            cpu_max: Some(CpuMax {
                quota_us: 150_000,
                period_us: 100_000,
            }),
            memory_max: Some(64 << 20),
            memory_high: Some(48 << 20),
            pids_max: Some(32),
        };
        let cell = h.create("acme", &limits).unwrap();
        let read = |p: &str| std::fs::read_to_string(tree.path().join(p)).unwrap();
        assert_eq!(read("cgroup.subtree_control"), "+cpu +memory +pids");
        assert_eq!(
            read("tern-cells/cgroup.subtree_control"),
            "+cpu +memory +pids"
        );
        assert_eq!(read("tern-cells/acme/cpu.weight"), "250");
        assert_eq!(read("tern-cells/acme/cpu.max"), "150000 100000");
        assert_eq!(read("tern-cells/acme/memory.max"), "67108864");
        assert_eq!(read("tern-cells/acme/memory.high"), "50331648");
        assert_eq!(read("tern-cells/acme/pids.max"), "32");
        assert_eq!(
            read("tern-cells/acme/memory.swap.max"),
            "0",
            "no swap past memory.max"
        );
        cell.add_process(4242).unwrap();
        assert_eq!(cell.processes().unwrap(), vec![4242]);
        std::fs::write(
            tree.path().join("tern-cells/acme/cpu.stat"),
            "usage_usec 1500\nuser_usec 1000\n",
        )
        .unwrap();
        assert_eq!(cell.cpu_usage_us().unwrap(), 1500);
        std::fs::write(
            tree.path().join("tern-cells/acme/memory.events"),
            "low 0\nhigh 3\nmax 1\noom 1\noom_kill 1\n",
        )
        .unwrap();
        assert_eq!(cell.oom_kills().unwrap(), 1);
        assert!(matches!(
            h.create("../escape", &limits),
            Err(Error::BadName(_))
        ));
    }
}
