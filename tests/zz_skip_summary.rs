//! The skip summary: how many tests of this `cargo test` run skipped, and why. Named to sort
//! last, since cargo runs the test binaries in name order; every skip was already printed as a
//! `SKIPPED` line when it happened (tests/common/mod.rs).

mod common;

use std::io::Write;

#[test]
fn skipped_tests_are_counted_and_listed() {
    let skips = common::take_skips();
    let n: usize = skips.values().map(Vec::len).sum();
    let mut out = format!(
        "\n{n} test{} skipped in this run{}\n",
        if n == 1 { "" } else { "s" },
        if n == 0 {
            "."
        } else {
            " (NICLIP_REQUIRE_DATA=1 / NICLIP_REQUIRE_GPU=1 make these failures):"
        }
    );
    for (what, tests) in &skips {
        out += &format!("  {} × needs {what}\n", tests.len());
        for t in tests {
            out += &format!("      {t}\n");
        }
    }
    // Straight to stderr: libtest would capture eprintln! in a passing test.
    std::io::stderr().write_all(out.as_bytes()).unwrap();
}
