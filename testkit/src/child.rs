//! Tests that re-run their own test binary as a child process (to SIGKILL it, say) start it
//! through an `#[ignore]`d entry point that panics without its parent's environment variable.

use std::process::Command;

/// Asserts that the child entry point `name` of the current test binary is not counted as a
/// test: a normal run reports it ignored (not passed), and run on its own (`--ignored`, without
/// `env`, its parent's variable) it fails.
pub fn assert_child_entry_is_not_a_test(name: &str, env: &str) {
    let run = |extra: &[&str]| {
        let o = Command::new(std::env::current_exe().expect("current test binary"))
            .args(extra)
            .args(["--exact", name, "--test-threads=1"])
            .env_remove(env)
            .output()
            .expect("running the test binary again");
        let out = String::from_utf8_lossy(&o.stdout).into_owned();
        (o.status.success(), out)
    };
    let (ok, out) = run(&[]);
    assert!(
        ok && out.contains("0 passed") && out.contains("1 ignored"),
        "{name} counted as a test:\n{out}"
    );
    let (ok, out) = run(&["--ignored"]);
    assert!(
        !ok && out.contains("1 failed"),
        "{name} passes without its parent:\n{out}"
    );
}
