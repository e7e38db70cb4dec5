//! Which workload a process belongs to, read from its cgroup path (cgroups(7),
//! `/proc/PID/cgroup`): the container and pod under Kubernetes, Docker, containerd and CRI-O,
//! or the systemd service elsewhere. These are the workload labels of every exported series,
//! so that two services on one host that both run `python3` are not one `python3`.
//!
//! Layouts recognised (cgroup v1 controller hierarchies and the v2 unified one alike; a
//! path seen from another cgroup namespace starts with `/..` components, which are ignored):
//! - Kubernetes, cgroupfs driver: `/kubepods/burstable/pod<uid>/<container id>`
//! - Kubernetes, systemd driver: `/kubepods.slice/kubepods-burstable.slice/
//!   kubepods-burstable-pod<uid with _ for ->.slice/<runtime>-<container id>.scope`, where
//!   runtime is `cri-containerd` (containerd) or `crio` (CRI-O; `crio-conmon-…` is its
//!   monitor, not the container) or `docker`
//! - Docker: `/docker/<id>` (cgroupfs), `/system.slice/docker-<id>.scope` (systemd);
//!   podman: `…/libpod-<id>.scope`; containerd without Kubernetes: `/<namespace>/<id>`
//! - anything else: the innermost `*.service` component is the unit.
use crate::model::fd::printable;

/// systemd caps unit names at 256 characters (UNIT_NAME_MAX).
const UNIT_CHARS: usize = 256;

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Workload {
    /// 64 hex digits, as the runtime names the container.
    pub(crate) container_id: Option<String>,
    /// The pod's UID with dashes, as `kubectl get pod -o jsonpath={.metadata.uid}` shows it.
    pub(crate) pod_uid: Option<String>,
    /// The systemd service, for processes in no container.
    pub(crate) unit: Option<String>,
}

impl Workload {
    /// From the text of `/proc/PID/cgroup`. The unified (v2) line is read first, then the
    /// `name=systemd` one, then the controllers: on hybrid hosts a process can sit in the root
    /// of one hierarchy and in its container's cgroup in another.
    pub(crate) fn from_proc_cgroup(text: &str) -> Workload {
        let mut paths: Vec<(u8, &str)> = text
            .lines()
            .filter_map(|line| {
                let mut fields = line.splitn(3, ':');
                let (id, controllers, path) = (fields.next()?, fields.next()?, fields.next()?);
                let rank = match (id, controllers) {
                    ("0", "") => 0,
                    (_, "name=systemd") => 1,
                    _ => 2,
                };
                Some((rank, path))
            })
            .collect();
        paths.sort_by_key(|(rank, _)| *rank);
        let parsed: Vec<Workload> = paths.iter().map(|(_, path)| Workload::from_path(path)).collect();
        parsed
            .iter()
            .find(|w| w.container_id.is_some() || w.pod_uid.is_some())
            .or_else(|| parsed.iter().find(|w| w.unit.is_some()))
            .cloned()
            .unwrap_or_default()
    }

    /// From one cgroup path. The innermost match wins (a container nested in another).
    pub(crate) fn from_path(path: &str) -> Workload {
        let mut workload = Workload::default();
        let mut unit = None;
        for component in path.split('/') {
            if let Some(id) = container_id(component) {
                workload.container_id = Some(id);
            } else if let Some(uid) = pod_uid(component) {
                workload.pod_uid = Some(uid);
            } else if component.ends_with(".service") {
                unit = Some(printable(component.as_bytes(), UNIT_CHARS));
            }
        }
        // The unit of a container is its runtime's business, not the workload's name.
        if workload.container_id.is_none() && workload.pod_uid.is_none() {
            workload.unit = unit;
        }
        workload
    }
}

fn is_hex(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// `<64 hex>`, or `<runtime>-<64 hex>.scope`.
fn container_id(component: &str) -> Option<String> {
    if component.starts_with("crio-conmon-") {
        return None;
    }
    let name = component.strip_suffix(".scope").unwrap_or(component);
    let id = name.rsplit('-').next()?;
    (id.len() == 64 && is_hex(id)).then(|| id.to_string())
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid with _>.slice` (systemd). A UID is
/// 8-4-4-4-12 hex digits; static pods' are 32 hex digits without dashes.
fn pod_uid(component: &str) -> Option<String> {
    let name = component.strip_suffix(".slice").unwrap_or(component);
    let raw = name.strip_prefix("pod").or_else(|| {
        let (prefix, rest) = name.rsplit_once("-pod")?;
        prefix.starts_with("kubepods").then_some(rest)
    })?;
    let uid = raw.replace('_', "-");
    let dashed = uid.len() == 36
        && uid.char_indices().all(|(i, c)| if [8, 13, 18, 23].contains(&i) { c == '-' } else { c != '-' })
        && is_hex(&uid.replace('-', ""));
    let plain = uid.len() == 32 && is_hex(&uid);
    (dashed || plain).then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f1c2a7e9b0d4c6a8e2f1b3d5c7a9e0f2b4d6c8a0e1f3b5d7c9a1e3f5b7d9c0a";
    const UID: &str = "0c6f3b5a-9d2e-4f1a-8b7c-6e5d4c3b2a10";

    fn w(container: Option<&str>, pod: Option<&str>, unit: Option<&str>) -> Workload {
        Workload {
            container_id: container.map(str::to_string),
            pod_uid: pod.map(str::to_string),
            unit: unit.map(str::to_string),
        }
    }

    #[test]
    fn kubernetes_layouts() {
        let uid_ = UID.replace('-', "_");
        let cases = [
            // containerd, systemd driver, cgroup v2
            format!(
                "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/cri-containerd-{ID}.scope"
            ),
            // CRI-O, systemd driver, guaranteed QoS
            format!("0::/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope"),
            // cgroupfs driver, cgroup v1 (any runtime)
            format!(
                "12:memory:/kubepods/besteffort/pod{UID}/{ID}\n1:name=systemd:/kubepods/besteffort/pod{UID}/{ID}"
            ),
            // dockershim, systemd driver, v1
            format!(
                "4:pids:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/docker-{ID}.scope"
            ),
            // seen from inside another cgroup namespace
            format!("0::/../../kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"),
        ];
        for text in cases {
            assert_eq!(Workload::from_proc_cgroup(&text), w(Some(ID), Some(UID), None), "{text}");
        }
    }

    #[test]
    fn docker_and_podman_without_kubernetes() {
        assert_eq!(
            Workload::from_proc_cgroup(&format!("0::/system.slice/docker-{ID}.scope")),
            w(Some(ID), None, None)
        );
        assert_eq!(
            Workload::from_proc_cgroup(&format!("3:cpu,cpuacct:/docker/{ID}")),
            w(Some(ID), None, None)
        );
        assert_eq!(
            Workload::from_proc_cgroup(&format!("0::/machine.slice/libpod-{ID}.scope/container")),
            w(Some(ID), None, None)
        );
        assert_eq!(Workload::from_proc_cgroup(&format!("0::/default/{ID}")), w(Some(ID), None, None));
    }

    #[test]
    fn crio_monitor_is_only_the_pod() {
        let text =
            format!("0::/kubepods.slice/kubepods-pod{}.slice/crio-conmon-{ID}.scope", UID.replace('-', "_"));
        assert_eq!(Workload::from_proc_cgroup(&text), w(None, Some(UID), None));
    }

    #[test]
    fn systemd_services() {
        assert_eq!(
            Workload::from_proc_cgroup("0::/system.slice/nginx.service"),
            w(None, None, Some("nginx.service"))
        );
        assert_eq!(
            Workload::from_proc_cgroup(
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/geo.service"
            ),
            w(None, None, Some("geo.service"))
        );
        // Hybrid host: unified root, the unit in name=systemd.
        let hybrid = "9:name=systemd:/system.slice/cron.service\n4:memory:/system.slice/cron.service\n0::/";
        assert_eq!(Workload::from_proc_cgroup(hybrid), w(None, None, Some("cron.service")));
        // A container under a service: the container, not the service.
        assert_eq!(
            Workload::from_proc_cgroup(&format!("0::/system.slice/docker.service/docker-{ID}.scope")),
            w(Some(ID), None, None)
        );
    }

    #[test]
    fn nothing_recognised_is_no_labels() {
        for text in [
            "0::/",
            "0::/user.slice/user-1000.slice/session-3.scope",
            "4:memory:/process_api/ab5be2113741d60f7140861839df25e8",
            "0::/kubepods/burstable/podnot-a-uid/abc",
            &format!("0::/kubepods/pod{}/{}", &UID[..35], &ID[..63]),
            "garbage",
            "",
        ] {
            assert_eq!(Workload::from_proc_cgroup(text), Workload::default(), "{text}");
        }
    }

    #[test]
    fn static_pod_uids_have_no_dashes() {
        let uid = "6e3c1b2a9d8f7e6d5c4b3a2f1e0d9c8b";
        assert_eq!(
            Workload::from_proc_cgroup(&format!("0::/kubepods/burstable/pod{uid}/{ID}")),
            w(Some(ID), Some(uid), None)
        );
    }

    #[test]
    fn unit_labels_are_printable_and_bounded() {
        let long = format!("0::/system.slice/{}\n.service", "a".repeat(400));
        assert_eq!(Workload::from_proc_cgroup(&long), Workload::default(), "a newline ends the line");
        let long = format!("0::/system.slice/{}.service", "a".repeat(400));
        let unit = Workload::from_proc_cgroup(&long).unit.unwrap();
        assert!(unit.chars().count() <= UNIT_CHARS + "…[truncated]".chars().count());
    }
}
