//! The command line around the server: completions, the manual page, flag errors.

use std::process::Command;

fn headroom(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_headroom"))
        .args(args)
        .output()
        .expect("headroom runs")
}

#[test]
fn completions_and_the_manual_page_are_printed() {
    for (shell, mark) in [
        ("bash", "_headroom()"),
        ("zsh", "#compdef headroom"),
        ("fish", "complete -c headroom"),
    ] {
        let out = headroom(&["completions", shell]);
        assert!(out.status.success(), "{shell}: {:?}", out.status);
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains(mark),
            "{shell}: {}",
            &script[..200.min(script.len())]
        );
        assert!(
            script.contains("check-config"),
            "{shell}: subcommands are completed"
        );
    }
    let out = headroom(&["man"]);
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.contains(".TH headroom 1"),
        "{}",
        &page[..200.min(page.len())]
    );
    assert!(page.contains("serve"), "the page lists the commands");
}

#[test]
fn a_bad_log_format_names_the_flag_and_the_choices() {
    let out = headroom(&["serve", "--log-format", "yaml"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--log-format") && err.contains("json") && err.contains("text"),
        "{err}"
    );
}
