//! One tenant, one call at a time: sessions that keep their snapshot
//! (`retain_for`), and a pin back to a version the node does not hold
//! that leaves the retained ones in place.

use strata_common::generate;
use strata_tests::{Agent, Fixture};

/// The versions `/v1/snapshots` lists.
async fn retained(agent: &Agent) -> Vec<u64> {
    agent.get("/v1/snapshots").await.json()["snapshots"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["version"].as_u64()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_keeps_its_snapshot_through_20_publishes_and_a_pin_back() {
    let fx = Fixture::new();
    fx.publish("v1", 12);
    let id = generate::tenant_id(3);
    let agent = fx.start_agent("a", "retain = 2");
    agent.serves(1).await;
    let call = format!("/v1/tenants/{id}/prompt?snapshot=1");
    let first = agent.get(&call).await;
    assert_eq!(first.status, 200);

    // 20 publishes while the call runs, each served in turn: `retain = 2`
    // alone would have dropped version 1 after the second.
    for v in 2..=21u64 {
        fx.publish(if v % 2 == 0 { "v2" } else { "v1" }, 12);
        agent.serves(v).await;
    }
    let later = agent.get(&call).await;
    assert_eq!(later.status, 200, "{}", later.text());
    assert_eq!(later.header("x-strata-snapshot"), Some("1"));
    assert_eq!(later.text(), first.text(), "the call's prompt did not move");
    assert_eq!(retained(&agent).await, (1..=21).collect::<Vec<_>>());
    agent.stop().await;

    // A node that holds only 21 is pinned back to 5: it fetches 5 and keeps
    // 21 for the calls locked to it.
    let pin = fx.dir.path().join("pin");
    let b = fx.start_agent(
        "b",
        &format!("retain = 2\npin_file = \"{}\"", pin.display()),
    );
    b.serves(21).await;
    let on_21 = b.get(&format!("/v1/tenants/{id}?snapshot=21")).await;
    assert_eq!(on_21.status, 200);
    std::fs::write(&pin, "5\n").expect("pin");
    b.serves(5).await;
    assert_eq!(retained(&b).await, vec![5, 21]);
    let still = b.get(&format!("/v1/tenants/{id}?snapshot=21")).await;
    assert_eq!(still.status, 200, "{}", still.text());
    assert_eq!(still.text(), on_21.text());
    assert_eq!(
        b.get(&format!("/v1/tenants/{id}"))
            .await
            .header("x-strata-snapshot"),
        Some("5")
    );
    // Let go of the pin: back on 21, and 5 stays for the calls it served.
    std::fs::remove_file(&pin).expect("unpin");
    b.serves(21).await;
    assert_eq!(
        b.get(&format!("/v1/tenants/{id}?snapshot=5")).await.status,
        200
    );
    b.stop().await;
}

/// The publisher on `fx`'s store: `args`, then `--store`.
fn publisher(fx: &Fixture, args: &[&str]) -> std::process::Output {
    std::process::Command::new(strata_tests::bin("strata-publisher"))
        .args(args)
        .arg("--store")
        .arg(format!("file://{}", fx.store_dir().display()))
        .output()
        .expect("run publisher")
}

/// stdout and stderr of `out`.
fn said(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// stdout and stderr of `out`, after asserting it succeeded.
fn ok(out: std::process::Output) -> String {
    let text = said(&out);
    assert!(out.status.success(), "{text}");
    text
}

/// Gives tenant `id` of `src` the version `version`.
fn set_version(src: &std::path::Path, id: &str, version: &str) {
    let file = src.join("tenants").join(format!("{id}.toml"));
    let text = std::fs::read_to_string(&file).expect("read tenant");
    let edited: String = text
        .lines()
        .map(|l| match l.starts_with("version = ") {
            true => format!("version = \"{version}\"\n"),
            false => format!("{l}\n"),
        })
        .collect();
    std::fs::write(&file, edited).expect("write tenant");
}

/// `history --tenant id --json`: (snapshot, version, held) per snapshot.
fn history(fx: &Fixture, id: &str) -> Vec<(u64, Option<String>, bool)> {
    let out = ok(publisher(fx, &["history", "--tenant", id, "--json"]));
    let v: serde_json::Value = serde_json::from_str(&out).expect("history JSON");
    v.as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["snapshot"].as_u64().unwrap_or_default(),
                e["version"].as_str().map(str::to_owned),
                !e["held"].is_null(),
            )
        })
        .collect()
}

async fn a_tenant_rollback_is_held_until_its_source_rises_above(format: &str) {
    let fx = Fixture::new();
    let (src, _) = fx.compile("v1", 80);
    let src_arg = src.display().to_string();
    let key = fx.key_path.display().to_string();
    let publish = |fx: &Fixture| {
        ok(publisher(
            fx,
            &[
                "publish", "--init", "--format", format, "--source", &src_arg, "--key", &key,
            ],
        ))
    };
    let (x, y) = (generate::tenant_id(7), generate::tenant_id(40));
    publish(&fx);
    let agent = fx.start_agent("a", "");
    agent.serves(1).await;
    let v1 = agent.get(&format!("/v1/tenants/{x}")).await.json();
    set_version(&src, &x, "7.0.0"); // the bad edit
    publish(&fx);
    set_version(&src, &y, "7.0.0"); // someone else's good one
    publish(&fx);

    let refused = publisher(
        &fx,
        &[
            "rollback",
            "--tenant",
            "no-such-tenant",
            "--to",
            "1",
            "--key",
            &key,
        ],
    );
    assert!(!refused.status.success());
    let why = String::from_utf8_lossy(&refused.stderr);
    assert!(why.contains("no-such-tenant is not in snapshot 1"), "{why}");

    let said = ok(publisher(
        &fx,
        &["rollback", "--tenant", &x, "--to", "1", "--key", &key],
    ));
    assert!(said.contains("held at"), "{said}");
    if format == "3" {
        // The page naming x's chunk (and that chunk, unless snapshot 1's
        // is still in the store: same records, same bytes); every other
        // chunk is kept.
        assert!(
            said.contains("uploaded 1 new object(s)") || said.contains("uploaded 2 new object(s)"),
            "{said}"
        );
    }
    agent.serves(4).await;
    let now = agent.get(&format!("/v1/tenants/{x}")).await.json();
    assert_eq!(now, v1, "x serves its record of snapshot 1");
    assert_eq!(
        agent.get(&format!("/v1/tenants/{y}")).await.json()["version"],
        "7.0.0"
    );
    let diff = ok(publisher(&fx, &["diff", "3", "4", "--json"]));
    let diff: serde_json::Value = serde_json::from_str(&diff).expect("diff JSON");
    assert_eq!(diff["changed"].as_array().map(Vec::len), Some(1), "{diff}");
    assert_eq!(diff["changed"][0]["tenant_id"], x.as_str());

    // The next routine publish keeps the rollback and says so.
    let said = publish(&fx);
    assert!(
        said.contains(&format!("tenant {x}")) && said.contains("held at"),
        "{said}"
    );
    agent.serves(5).await;
    assert_eq!(agent.get(&format!("/v1/tenants/{x}")).await.json(), v1);
    // A version above the bad one releases it.
    set_version(&src, &x, "7.0.1");
    let said = publish(&fx);
    assert!(said.contains("no longer holds"), "{said}");
    agent.serves(6).await;
    assert_eq!(
        agent.get(&format!("/v1/tenants/{x}")).await.json()["version"],
        "7.0.1"
    );
    agent.stop().await;

    let old = v1["version"].as_str().map(str::to_owned);
    let seven = Some("7.0.0".to_owned());
    assert_eq!(
        history(&fx, &x),
        vec![
            (1, old.clone(), false),
            (2, seven.clone(), false),
            (3, seven, false),
            (4, old.clone(), true),
            (5, old, true),
            (6, Some("7.0.1".to_owned()), false),
        ]
    );
    let listed = ok(publisher(&fx, &["list"]));
    assert!(listed.contains(&format!("held: {x} at")), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_rollback_is_held_until_its_source_rises_above_format_3() {
    a_tenant_rollback_is_held_until_its_source_rises_above("3").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_rollback_is_held_until_its_source_rises_above_format_2() {
    a_tenant_rollback_is_held_until_its_source_rises_above("2").await;
}

/// Writes `tenants/<id>.canary.toml`: tenant `id`'s file with `edit` made,
/// version 9.0.0 and `canary_percent = percent`.
fn write_canary(src: &std::path::Path, id: &str, percent: &str, edit: (&str, &str)) {
    let text = std::fs::read_to_string(src.join("tenants").join(format!("{id}.toml")))
        .expect("tenant file");
    assert!(text.contains(edit.0), "{} not in {id}", edit.0);
    let mut canary: String = text
        .replacen(edit.0, edit.1, 1)
        .lines()
        .map(|l| match l.starts_with("version = ") {
            true => "version = \"9.0.0\"\n".to_owned(),
            false => format!("{l}\n"),
        })
        .collect();
    canary.insert_str(0, &format!("canary_percent = {percent}\n"));
    std::fs::write(
        src.join("tenants").join(format!("{id}.canary.toml")),
        canary,
    )
    .expect("canary file");
}

/// Which of `sessions` get tenant `id`'s canary (by the arm header, which
/// must agree with the body), and the agent's count of canary answers.
async fn canary_sessions(agent: &Agent, id: &str, sessions: &[String]) -> Vec<String> {
    let mut drawn = Vec::new();
    for s in sessions {
        let a = agent.get(&format!("/v1/tenants/{id}?session={s}")).await;
        assert_eq!(a.status, 200);
        let arm = a.header("x-strata-arm").unwrap_or_default().to_owned();
        let version = a.json()["version"].as_str().unwrap_or_default().to_owned();
        assert_eq!(
            arm == "canary",
            version == "9.0.0",
            "{s}: arm {arm}, version {version}"
        );
        if arm == "canary" {
            drawn.push(s.clone());
        }
    }
    drawn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_answers_its_share_of_sessions_each_keeping_its_arm() {
    let fx = Fixture::new();
    let (src, _) = fx.compile("v1", 20);
    let src_arg = src.display().to_string();
    let key = fx.key_path.display().to_string();
    let publish = |fx: &Fixture| {
        publisher(
            fx,
            &["publish", "--init", "--source", &src_arg, "--key", &key],
        )
    };
    let id = generate::tenant_id(4);
    // The canary is the tenant's file at version 9.0.0.
    write_canary(&src, &id, "10", ("version = ", "version = "));
    ok(publish(&fx));
    let agent = fx.start_agent("a", "");
    agent.serves(1).await;
    let plain = agent.get(&format!("/v1/tenants/{id}")).await;
    assert_eq!(
        plain.header("x-strata-arm"),
        Some("stable"),
        "no session: stable"
    );
    assert_ne!(plain.json()["version"], "9.0.0");
    let sessions: Vec<String> = (0..600).map(|i| format!("call-{i}")).collect();
    let at10 = canary_sessions(&agent, &id, &sessions).await;
    assert!(
        (25..=100).contains(&at10.len()),
        "{} of 600 at 10 %",
        at10.len()
    );
    // The prompt follows the same arm.
    let s = &at10[0];
    let p = agent
        .get(&format!("/v1/tenants/{id}/prompt?session={s}"))
        .await;
    assert_eq!(p.header("x-strata-arm"), Some("canary"));

    // Raised to 50 %: every session the canary had, it keeps.
    write_canary(&src, &id, "50", ("version = ", "version = "));
    ok(publish(&fx));
    agent.serves(2).await;
    let at50 = canary_sessions(&agent, &id, &sessions).await;
    assert!(
        at10.iter().all(|s| at50.contains(s)),
        "raising the percent only adds sessions"
    );
    assert!(
        (240..=360).contains(&at50.len()),
        "{} of 600 at 50 %",
        at50.len()
    );
    // The edges: 0 % and 100 %.
    for (percent, want) in [("0", 0), ("100", sessions.len())] {
        write_canary(&src, &id, percent, ("version = ", "version = "));
        ok(publish(&fx));
        let v = if percent == "0" { 3 } else { 4 };
        agent.serves(v).await;
        assert_eq!(
            canary_sessions(&agent, &id, &sessions).await.len(),
            want,
            "{percent} %"
        );
    }
    let metrics = String::from_utf8_lossy(&agent.get("/metrics").await.body).into_owned();
    assert!(
        metrics.contains("strata_lookups_by_arm_total{arm=\"canary\"}"),
        "{metrics}"
    );
    agent.stop().await;

    // A canary that fails validation refuses the publish, naming its file;
    // so does one routing other numbers than its tenant.
    let canary_file = src.join("tenants").join(format!("{id}.canary.toml"));
    let text = std::fs::read_to_string(&canary_file).expect("canary");
    for (from, to, field) in [
        (
            "canary_percent = 100",
            "canary_percent = 100.5",
            "canary_percent",
        ),
        (
            "phone_numbers = [",
            "phone_numbers = [\"+15550009999\", ",
            "phone_numbers",
        ),
    ] {
        std::fs::write(&canary_file, text.replacen(from, to, 1)).expect("write");
        let out = publish(&fx);
        assert!(!out.status.success());
        let why = said(&out);
        assert!(
            why.contains(&format!("{id}.canary.toml")) && why.contains(field),
            "{why}"
        );
    }
    // With --quarantine the bad canary is held back on its last record;
    // its tenant and everyone else are published.
    let quarantined = ok(publisher(
        &fx,
        &[
            "publish",
            "--quarantine",
            "--source",
            &src_arg,
            "--key",
            &key,
        ],
    ));
    assert!(
        quarantined.contains("held back") && quarantined.contains("published version 5"),
        "{quarantined}"
    );
    // A canary whose tenant is gone is refused: it never outlives it.
    std::fs::write(&canary_file, &text).expect("restore");
    std::fs::remove_file(src.join("tenants").join(format!("{id}.toml"))).expect("remove");
    let out = publish(&fx);
    assert!(!out.status.success());
    let why = said(&out);
    assert!(why.contains("which the source does not hold"), "{why}");
    let diff = ok(publisher(&fx, &["diff", "1", "2"]));
    assert!(diff.contains(&format!("{id}.canary")), "{diff}");
    let inspected = ok(publisher(&fx, &["inspect", "--version", "2"]));
    assert!(
        inspected.contains(&format!("canary: {id}.canary answers 50 %")),
        "{inspected}"
    );
}
