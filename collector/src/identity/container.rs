//! Container id and Kubernetes pod UID from a cgroup v2 path, for the naming schemes of the
//! common runtimes (pure string parsing, no I/O):
//!
//! | runtime / driver | cgroup path (last components) |
//! |---|---|
//! | Docker, systemd driver | `system.slice/docker-<id>.scope` |
//! | Docker, cgroupfs driver | `docker/<id>` |
//! | containerd (CRI), systemd | `kubepods.slice/kubepods-<qos>.slice/kubepods-<qos>-pod<uid_>.slice/cri-containerd-<id>.scope` |
//! | containerd (CRI), cgroupfs | `kubepods/<qos>/pod<uid>/<id>` |
//! | CRI-O, systemd / cgroupfs | `…pod<uid_>.slice/crio-<id>.scope` / `kubepods/<qos>/pod<uid>/crio-<id>` |
//! | Podman, systemd / cgroupfs | `machine.slice/libpod-<id>.scope` / `libpod_parent/libpod-<id>` |
//! | cri-dockerd | `…/docker-<id>.scope` (as Docker) |
//!
//! `<id>` is 64 lowercase hex digits. systemd escapes `-` in unit names as `_`, so the pod UID
//! in a slice name has underscores; it is returned with dashes. Static (mirror) pods have a
//! 32-hex-digit UID without dashes, returned as is. The innermost container component wins
//! (a container running systemd has sub-cgroups such as `docker-<id>.scope/init.scope`).
//! Runtime helpers that are not the container (`crio-conmon-<id>.scope`,
//! `libpod-conmon-<id>.scope`) and every unknown form give no container id: the cgroup path
//! is still recorded.

/// Prefixes of a container's own cgroup name (before the 64-hex id).
const ID_PREFIXES: [&str; 5] = [
    "cri-containerd-",
    "docker-",
    "crio-",
    "libpod-",
    "containerd-",
];

fn is_hex(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The container id a single cgroup directory name carries.
fn container_of(name: &str) -> Option<&str> {
    let base = name.strip_suffix(".scope").unwrap_or(name);
    let id = ID_PREFIXES
        .iter()
        .find_map(|p| base.strip_prefix(p))
        .unwrap_or(base);
    (id.len() == 64 && is_hex(id)).then_some(id)
}

/// The pod UID a single cgroup directory name carries (`pod<uid>` or `…-pod<uid>.slice`).
fn pod_of(name: &str) -> Option<String> {
    let base = name.strip_suffix(".slice").unwrap_or(name);
    // The UID follows the last "pod" at the start of the name or after a '-'.
    let at = if let Some(rest) = base.strip_prefix("pod") {
        rest
    } else {
        let i = base.rfind("-pod")?;
        &base[i + 4..]
    };
    let uid = at.replace('_', "-");
    let dashed = uid.len() == 36
        && uid.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    let plain = uid.len() == 32 && uid.chars().all(|c| c.is_ascii_hexdigit());
    (dashed || plain).then(|| uid.to_ascii_lowercase())
}

/// (container id, pod UID) of a cgroup path such as `/kubepods.slice/.../cri-containerd-<id>.scope`.
pub fn parse(path: &str) -> (Option<&str>, Option<String>) {
    let mut container = None;
    let mut pod = None;
    for name in path.split('/').filter(|c| !c.is_empty()) {
        if let Some(id) = container_of(name) {
            container = Some(id);
        }
        if let Some(uid) = pod_of(name) {
            pod = Some(uid);
        }
    }
    // A pod UID belongs to Kubernetes cgroups only: outside `kubepods`, a `pod…` name is
    // someone else's naming.
    if !path.contains("kubepods") {
        pod = None;
    }
    (container, pod)
}

#[cfg(test)]
mod tests {
    use super::parse;

    const ID: &str = "3f4a5b6c7d8e9f00112233445566778899aabbccddeeff00112233445566778a";
    const UID: &str = "0b5a9f6e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";
    const UID_: &str = "0b5a9f6e_1c2d_4e5f_8a9b_0c1d2e3f4a5b";

    fn check(path: String, container: Option<&str>, pod: Option<&str>) {
        let (c, p) = parse(&path);
        assert_eq!(c, container, "container id of {path}");
        assert_eq!(p.as_deref(), pod, "pod uid of {path}");
    }

    #[test]
    fn every_runtime_naming_form() {
        let id = Some(ID);
        let uid = Some(UID);
        // Docker.
        check(format!("/system.slice/docker-{ID}.scope"), id, None);
        check(format!("/docker/{ID}"), id, None);
        // containerd CRI, systemd driver, each QoS class (guaranteed has no QoS slice).
        for qos in ["besteffort", "burstable"] {
            check(
                format!(
                    "/kubepods.slice/kubepods-{qos}.slice/kubepods-{qos}-pod{UID_}.slice/cri-containerd-{ID}.scope"
                ),
                id,
                uid,
            );
        }
        check(
            format!("/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{ID}.scope"),
            id,
            uid,
        );
        // containerd CRI, cgroupfs driver.
        check(format!("/kubepods/besteffort/pod{UID}/{ID}"), id, uid);
        check(format!("/kubepods/pod{UID}/{ID}"), id, uid);
        // CRI-O.
        check(
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/crio-{ID}.scope"
            ),
            id,
            uid,
        );
        check(format!("/kubepods/burstable/pod{UID}/crio-{ID}"), id, uid);
        // Podman: rootful systemd, rootless systemd, cgroupfs.
        check(format!("/machine.slice/libpod-{ID}.scope"), id, None);
        check(
            format!("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"),
            id,
            None,
        );
        check(format!("/libpod_parent/libpod-{ID}"), id, None);
        // The pod's sandbox-level cgroup: pod, no container.
        check(
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice"
            ),
            None,
            uid,
        );
        // systemd inside a container: the container's sub-cgroups.
        check(
            format!("/system.slice/docker-{ID}.scope/init.scope"),
            id,
            None,
        );
        // Static pod (mirror pod UID = 32 hex digits).
        check(
            format!("/kubepods/burstable/pod0123456789abcdef0123456789abcdef/{ID}"),
            id,
            Some("0123456789abcdef0123456789abcdef"),
        );
    }

    #[test]
    fn unknown_or_unusual_names_give_no_ids() {
        for path in [
            "/",
            "/system.slice/nginx.service",
            "/user.slice/user-1000.slice/session-3.scope",
            // Runtime helpers, not the container.
            &format!("/kubepods.slice/crio-conmon-{ID}.scope"),
            &format!("/machine.slice/libpod-conmon-{ID}.scope"),
            // Too short, too long, upper case, not hex.
            &format!("/docker/{}", &ID[..63]),
            &format!("/docker/{ID}0"),
            &format!("/docker/{}", ID.to_uppercase()),
            &format!("/docker/{}g", &ID[..63]),
            "/system.slice/docker-.scope",
            "/weird name with spaces/ünïcode",
        ] {
            check(path.to_string(), None, None);
        }
        // A pod-like name outside kubepods is not a pod.
        check(format!("/system.slice/x-pod{UID_}.slice"), None, None);
        // A malformed UID under kubepods is ignored.
        check("/kubepods/besteffort/podnot-a-uid".into(), None, None);
    }
}
