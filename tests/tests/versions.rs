//! Version discipline per tenant, through the real publisher: against the
//! snapshot the channel serves, a tenant's version may not go down, and
//! content that changed needs a higher version; a Layer 1 default that
//! changed under tenants needs none; `rollback` is how old content returns.

use std::path::Path;
use std::process::{Command, Output};

use strata_common::channel::{self, PublishError, PublishOptions};
use strata_common::compile::{self, CompileOptions, Compiled};
use strata_common::source::Source;
use strata_common::store::{Fetched, ListPage, ReadStore, StoreError, WriteStore};
use strata_common::versions;
use strata_tests::{Fixture, bin};

fn publish(fx: &Fixture, src: &Path) -> Output {
    publish_with(fx, src, &[])
}

fn publish_with(fx: &Fixture, src: &Path, args: &[&str]) -> Output {
    Command::new(bin("strata-publisher"))
        .args(["publish", "--init", "--source"])
        .arg(src)
        .arg("--key")
        .arg(&fx.key_path)
        .arg("--store")
        .arg(format!("file://{}", fx.store_dir().display()))
        .args(args)
        .output()
        .expect("run publisher")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The tenant files of the source `src`, sorted.
fn tenant_files(src: &Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(src.join("tenants"))
        .expect("tenants")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    files
}

fn bundles(fx: &Fixture) -> usize {
    std::fs::read_dir(fx.store_dir().join("snapshots"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Rewrites the line of `file` starting with `prefix`.
fn set_line(file: &Path, prefix: &str, line: &str) {
    let old = std::fs::read_to_string(file).expect("read");
    let new: String = old
        .lines()
        .map(|l| {
            if l.starts_with(prefix) {
                format!("{line}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    assert_ne!(old, new, "{prefix} not in {}", file.display());
    std::fs::write(file, new).expect("write");
}

#[test]
fn a_tenant_s_version_goes_up_with_its_content_and_never_down() {
    let fx = Fixture::new();
    let (src, _) = fx.compile("v1", 5);
    assert!(publish(&fx, &src).status.success());
    let files = tenant_files(&src);
    let file = &files[1];
    let tenant = file
        .file_stem()
        .expect("stem")
        .to_string_lossy()
        .into_owned();
    let original = std::fs::read_to_string(file).expect("read");
    let version = original
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .expect("version")
        .to_owned();

    // Lowered.
    set_line(file, "version = ", "version = \"0.0.1\"");
    let out = publish(&fx, &src);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains(&format!(
            "tenant {tenant}: version: 0.0.1 is lower than {version}, the version snapshot 1 serves"
        )),
        "{t}"
    );
    assert!(t.contains("config_hash "), "{t}");
    assert!(t.contains("nothing was published"), "{t}");
    assert_eq!(
        bundles(&fx),
        1,
        "a refused publish leaves the store untouched"
    );

    // Content changed, version kept.
    std::fs::write(file, &original).expect("restore");
    set_line(file, "name = ", "name = \"Renamed Without A Bump\"");
    let out = publish(&fx, &src);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "tenant {tenant}: version: the content changed but the version stays {version}"
        )),
        "{}",
        text(&out)
    );
    assert_eq!(bundles(&fx), 1);

    // Content changed with a higher version: published.
    set_line(file, "version = ", "version = \"99.0.0\"");
    let out = publish(&fx, &src);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(bundles(&fx), 2);

    // A Layer 1 default changed under every tenant: no tenant changed.
    set_line(
        &src.join("layer1.toml"),
        "temperature = 0.7",
        "temperature = 0.6",
    );
    let out = publish(&fx, &src);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(bundles(&fx), 3);

    // Old content returns through rollback only.
    let out = Command::new(bin("strata-publisher"))
        .args(["rollback", "--to", "1", "--key"])
        .arg(&fx.key_path)
        .arg("--store")
        .arg(format!("file://{}", fx.store_dir().display()))
        .output()
        .expect("rollback");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(bundles(&fx), 4);
}

/// Issue 24 item 9: a served bundle damaged past its header (here: all
/// but its first 40 bytes gone) no longer switches the guards off. The
/// signed pointer's tenant count still refuses an empty source; a source
/// whose versions cannot be checked is refused until the operator says
/// `--allow-damaged`; the publish over it restores every guard.
#[test]
fn a_damaged_served_bundle_keeps_the_guards() {
    let fx = Fixture::new();
    let (src, _) = fx.compile("v1", 20);
    assert!(publish(&fx, &src).status.success());
    let bundle = fx.store_dir().join("snapshots/00000000000000000001.bundle");
    let bytes = std::fs::read(&bundle).expect("bundle");
    std::fs::write(&bundle, &bytes[..40]).expect("damage");

    // One of 20 tenants left: refused by the pointer's count.
    let one = fx.dir.path().join("one");
    std::fs::create_dir_all(one.join("tenants")).expect("mkdir");
    std::fs::copy(src.join("layer1.toml"), one.join("layer1.toml")).expect("layer1");
    let first = tenant_files(&src).remove(0);
    std::fs::copy(
        &first,
        one.join("tenants").join(first.file_name().expect("name")),
    )
    .expect("tenant");
    for allow in [&[][..], &["--allow-damaged"][..]] {
        let out = publish_with(&fx, &one, allow);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(
            text(&out)
                .contains("this source has 1 tenant(s), the channel's snapshot (version 1) 20"),
            "{}",
            text(&out)
        );
        assert_eq!(bundles(&fx), 1);
    }

    // The whole source: its versions cannot be checked, so refused...
    let out = publish(&fx, &src);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("the channel's snapshot (version 1) is damaged")
            && t.contains("--allow-damaged"),
        "{t}"
    );
    assert_eq!(
        bundles(&fx),
        1,
        "a refused publish leaves the store untouched"
    );
    // ...as validate against the store is.
    let out = Command::new(bin("strata-publisher"))
        .args(["validate", "--source"])
        .arg(&src)
        .arg("--store")
        .arg(format!("file://{}", fx.store_dir().display()))
        .arg("--trusted-key")
        .arg(strata_common::sign::public_path(&fx.key_path))
        .output()
        .expect("validate");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));

    // ...until the operator allows it, which replaces the damaged snapshot.
    let out = publish_with(&fx, &src, &["--allow-damaged"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("warning: tenant versions not checked against the channel's snapshot"),
        "{}",
        text(&out)
    );
    assert_eq!(bundles(&fx), 2);

    // Over an intact head every guard is back: a lowered version is refused.
    set_line(&first, "version = ", "version = \"0.0.1\"");
    let out = publish_with(&fx, &src, &["--allow-damaged"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("is lower than"), "{}", text(&out));
    assert_eq!(bundles(&fx), 2);
}

/// A tenant whose id extends another's (`x` and `x-east`) comes after it
/// in the snapshot, as agents check: ordered by file name, `x-east.toml`
/// came first ('-' sorts before '.'), and every agent refused the publish.
#[test]
fn a_tenant_whose_id_extends_another_s_is_published_in_id_order() {
    let fx = Fixture::new();
    let (src, _) = fx.compile("v1", 2);
    let first = tenant_files(&src).remove(0);
    let id = first
        .file_stem()
        .and_then(|s| s.to_str())
        .expect("id")
        .to_owned();
    let longer = format!("{id}-east");
    let renamed = std::fs::read_to_string(&first)
        .expect("read")
        .replace(&id, &longer);
    let copy = src.join("tenants").join(format!("{longer}.toml"));
    std::fs::write(&copy, renamed).expect("write");
    set_line(
        &copy,
        "phone_numbers = ",
        "phone_numbers = [\"+19990000001\"]",
    );
    let out = publish(&fx, &src);
    assert!(out.status.success(), "{}", text(&out));
    let inspect = Command::new(bin("strata-publisher"))
        .arg("inspect")
        .arg(fx.store_dir().join("snapshots/00000000000000000001.bundle"))
        .arg("--pubkey")
        .arg(strata_common::sign::public_path(&fx.key_path))
        .output()
        .expect("inspect");
    assert!(inspect.status.success(), "{}", text(&inspect));
    assert!(
        text(&inspect).contains("records: 3 tenant config(s)"),
        "{}",
        text(&inspect)
    );
}

/// A served snapshot that verifies but whose payload does not decode (a
/// buggy publisher's, signed) is damage, as a bundle that fails its hash
/// is: refused with the way out (--allow-damaged) instead of asking to try
/// again for ever.
#[test]
fn a_served_payload_that_does_not_decode_does_not_lock_the_channel() {
    let fx = Fixture::new();
    let (src, compiled) = fx.compile("v1", 3);
    let bad = strata_tests::rewrite(&compiled, |c| {
        let (_, config) = c.configs.iter_mut().next().expect("a tenant");
        let mut json: serde_json::Value = serde_json::from_slice(config).expect("json");
        json["config_hash"] = "not a hash".into();
        *config = serde_json::to_vec(&json).expect("json");
    });
    fx.publish_with(&bad, std::slice::from_ref(&fx.key));
    let out = publish(&fx, &src);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(bundles(&fx), 1);
    let out = publish_with(&fx, &src, &["--allow-damaged"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("warning: tenant versions not checked against the channel's snapshot"),
        "{}",
        text(&out)
    );
    assert_eq!(bundles(&fx), 2);
}

/// A file store whose channel is moved by another publisher (`race`) just
/// before this publisher's first write under `on` (`snapshots/`: its
/// upload; `channels/`: its pointer): the races two `publish` commands
/// started together run.
struct Racing {
    inner: strata_common::store::FileStore,
    on: &'static str,
    race: std::sync::Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl Racing {
    fn before_write(&self, key: &str) {
        if key.starts_with(self.on) {
            let race = self.race.lock().expect("lock").take();
            if let Some(race) = race {
                race();
            }
        }
    }
}

impl ReadStore for Racing {
    fn url(&self) -> &strata_common::store::StoreUrl {
        self.inner.url()
    }
    fn get_if_changed(
        &self,
        key: &str,
        etag: Option<&str>,
        max_bytes: u64,
    ) -> Result<Fetched, StoreError> {
        self.inner.get_if_changed(key, etag, max_bytes)
    }
    fn get_range(&self, key: &str, range: std::ops::Range<u64>) -> Result<Vec<u8>, StoreError> {
        self.inner.get_range(key, range)
    }
    fn get_to(
        &self,
        key: &str,
        max_bytes: u64,
        out: &mut dyn std::io::Write,
    ) -> Result<u64, StoreError> {
        self.inner.get_to(key, max_bytes, out)
    }
}

impl WriteStore for Racing {
    fn put_new(&self, key: &str, bytes: &[u8]) -> Result<(), StoreError> {
        self.before_write(key);
        self.inner.put_new(key, bytes)
    }
    fn put_if(
        &self,
        key: &str,
        bytes: &[u8],
        expected: Option<&str>,
    ) -> Result<String, StoreError> {
        self.before_write(key);
        self.inner.put_if(key, bytes, expected)
    }
    fn list_page(&self, prefix: &str, after: Option<&str>) -> Result<ListPage, StoreError> {
        self.inner.list_page(prefix, after)
    }
    fn delete(&self, key: &str) -> Result<(), StoreError> {
        self.inner.delete(key)
    }
}

/// Two publishes started together from different sources: the one that
/// moves the channel second is checked again against the snapshot the
/// first one published. A tenant the first raised is not lowered by the
/// second (refused, nothing of it left in the store); a second publish
/// that lowers nothing lands on top.
#[test]
fn a_publish_overtaken_by_another_is_checked_again_against_the_new_head() {
    let fx = Fixture::new();
    let (old_src, old) = fx.compile("old", 5);
    fx.publish_with(&old, std::slice::from_ref(&fx.key));
    let new_src = fx.dir.path().join("source-new");
    copy_dir(&old_src, &new_src);
    strata_tests::change_one_tenant(&new_src, 0);
    let new = compile::compile(
        &Source::open(&new_src).expect("source"),
        CompileOptions::default(),
    )
    .expect("compile");
    let newer_src = fx.dir.path().join("source-newer");
    copy_dir(&new_src, &newer_src);
    strata_tests::change_one_tenant(&newer_src, 1);
    let newer = compile::compile(
        &Source::open(&newer_src).expect("source"),
        CompileOptions::default(),
    )
    .expect("compile");
    // A compiled source is used once a publish: each competitor compiles again.
    let again = |dir: &Path| {
        compile::compile(
            &Source::open(dir).expect("source"),
            CompileOptions::default(),
        )
        .expect("compile")
    };
    let trust = strata_common::sign::TrustedKeys::for_publisher(std::slice::from_ref(&fx.key), &[]);

    // The competitor takes the key after a fresh upload no pointer names
    // at once, as it would after waiting for that upload's publisher.
    let racing = |on: &'static str, competitor: Compiled| Racing {
        inner: fx.store(),
        on,
        race: std::sync::Mutex::new(Some(Box::new({
            let store = fx.store();
            let key = fx.key.clone();
            move || {
                let opts = PublishOptions {
                    abandoned_after: std::time::Duration::ZERO,
                    ..PublishOptions::for_channel("stable")
                };
                channel::publish(&store, &competitor, std::slice::from_ref(&key), &opts)
                    .expect("the competing publish");
            }
        }))),
    };
    let publish_checked = |store: &Racing, compiled: &Compiled, dir: &Path| {
        let mut heads = Vec::new();
        let result = channel::publish_gated(
            store,
            compiled,
            std::slice::from_ref(&fx.key),
            &PublishOptions::for_channel("stable"),
            &mut |head| {
                let Some(head) = head else { return Ok(()) };
                heads.push(head.version);
                let problems = versions::check_against(store, head, &trust, compiled, dir, false)
                    .map(|c| c.problems)
                    .expect("versions checked");
                match problems.first() {
                    None => Ok(()),
                    Some(p) => Err(PublishError::Refused(p.to_string())),
                }
            },
        );
        (result, heads)
    };
    let head = || {
        strata_common::pointer::Pointer::read_channel(&fx.store(), "stable", &trust)
            .expect("pointer")
            .expect("a pointer")
            .0
            .version
    };

    // The old source, overtaken before its upload by the new one: refused.
    let (result, heads) = publish_checked(&racing("snapshots/", again(&new_src)), &old, &old_src);
    let Err(PublishError::Refused(why)) = result else {
        panic!("the overtaken publish was not refused: {result:?}");
    };
    assert!(why.contains("is lower than 9.9.0"), "{why}");
    assert_eq!(
        heads,
        [1, 2],
        "checked against version 1, then again against 2"
    );
    assert_eq!(bundles(&fx), 2, "nothing of the refused publish is left");
    assert_eq!(head(), 2, "the channel stays at the new source's version");

    // Overtaken after its upload (version 3) and before its pointer: the
    // new source passes against version 2, not against the newer one's 4.
    let (result, heads) = publish_checked(&racing("channels/", again(&newer_src)), &new, &new_src);
    let Err(PublishError::Refused(why)) = result else {
        panic!("the overtaken publish was not refused: {result:?}");
    };
    assert!(why.contains("is lower than 9.9.1"), "{why}");
    assert_eq!(heads, [2, 4]);
    assert_eq!(head(), 4);

    // Overtaken the same way by a publish it lowers nothing of: it lands
    // on top.
    let (result, heads) =
        publish_checked(&racing("channels/", again(&newer_src)), &newer, &newer_src);
    let published = result.expect("lands after the competitor");
    assert_eq!(heads, [4, 6]);
    assert_eq!(published.pointer.version, 7);
    assert_eq!(head(), 7);
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

/// A source that lost tenants by mistake (files misnamed, a wrong or empty
/// directory) is not published unasked: past one tenant and 10 % of the
/// channel's, the publish is refused naming the tenants, and the files
/// that were not read are named by `validate` and `publish` alike. One
/// tenant off-boarded is routine and goes through.
#[test]
fn a_publish_that_removes_many_tenants_is_refused_unless_allowed() {
    let fx = Fixture::new();
    let (src, _) = fx.compile("v1", 10);
    assert!(publish(&fx, &src).status.success());
    let files = tenant_files(&src);
    let stem = |f: &Path| f.file_stem().expect("stem").to_string_lossy().into_owned();

    // One tenant removed: routine, and named.
    std::fs::remove_file(&files[0]).expect("remove");
    let out = publish(&fx, &src);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "note: tenant {} (served by version 1) is removed",
            stem(&files[0])
        )),
        "{}",
        text(&out)
    );
    assert_eq!(bundles(&fx), 2);

    // Two more misnamed: both named as not read, the publish refused.
    for f in &files[1..3] {
        std::fs::rename(f, f.with_extension("tml")).expect("rename");
    }
    std::fs::write(src.join("tenants/.gitkeep"), "").expect("dot file");
    std::fs::write(src.join("tenants/._acme.toml"), [0u8, 5, 22]).expect("macOS resource fork");
    let out = Command::new(bin("strata-publisher"))
        .args(["validate", "--source"])
        .arg(&src)
        .output()
        .expect("validate");
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    for f in &files[1..3] {
        assert!(
            t.contains(&format!(
                "warning: {}: not read",
                f.with_extension("tml").display()
            )),
            "{t}"
        );
    }
    assert!(
        !t.contains(".gitkeep") && !t.contains("._acme"),
        "dot files are the repository's: {t}"
    );
    let out = publish(&fx, &src);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    // The summary first, then the names.
    assert!(
        t.contains(
            "this publish removes 2 of the 9 tenants channel stable serves (version 2); they are:"
        ),
        "{t}"
    );
    assert!(
        t.contains("2 of 9 tenants would be removed; nothing was published"),
        "{t}"
    );
    assert!(t.contains("--allow-removals"), "{t}");
    for f in &files[1..3] {
        assert!(
            t.contains(&format!(
                "tenant {}: served by version 2, not in this source",
                stem(f)
            )),
            "every removed tenant named: {t}"
        );
    }
    assert_eq!(
        bundles(&fx),
        2,
        "a refused publish leaves the store untouched"
    );

    // An empty source: said by validate, refused by publish.
    let empty = fx.dir.path().join("empty");
    std::fs::create_dir_all(empty.join("tenants")).expect("mkdir");
    std::fs::copy(src.join("layer1.toml"), empty.join("layer1.toml")).expect("layer1");
    let out = Command::new(bin("strata-publisher"))
        .args(["validate", "--source"])
        .arg(&empty)
        .output()
        .expect("validate");
    assert!(text(&out).contains("no *.toml file"), "{}", text(&out));
    let out = publish(&fx, &empty);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("removes 9 of the 9 tenants"),
        "{}",
        text(&out)
    );

    // Meant: allowed.
    let out = Command::new(bin("strata-publisher"))
        .args(["publish", "--init", "--allow-removals", "--source"])
        .arg(&src)
        .arg("--key")
        .arg(&fx.key_path)
        .arg("--store")
        .arg(format!("file://{}", fx.store_dir().display()))
        .output()
        .expect("run publisher");
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("7 tenant(s)"), "{}", text(&out));
    assert_eq!(bundles(&fx), 3);

    // A rollback is meant, never refused, but what it drops is said.
    let out = rollback_to(&fx, 1);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("note:"), "{}", text(&out));
    let out = rollback_to(&fx, 3);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("note: version 4 served 10 tenant(s), version 5 serves 7"),
        "{}",
        text(&out)
    );
}

/// `validate --store` runs the publish-time checks against what the channel
/// serves, so CI fails the pull request, not the merge; it writes nothing.
#[test]
fn validate_against_the_store_fails_the_pull_request_not_the_merge() {
    let fx = Fixture::new();
    let (src, _) = fx.compile("v1", 5);
    assert!(publish(&fx, &src).status.success());
    let validate = |extra: &[&str]| {
        Command::new(bin("strata-publisher"))
            .args(["validate", "--source"])
            .arg(&src)
            .arg("--store")
            .arg(format!("file://{}", fx.store_dir().display()))
            .args(extra)
            .output()
            .expect("run publisher")
    };
    let pubkey = strata_common::sign::public_path(&fx.key_path);
    let pubkey = pubkey.display().to_string();
    // Without the key to read the channel with: a usage error, said.
    let out = validate(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("--trusted-key"), "{}", text(&out));
    let ok = validate(&["--trusted-key", &pubkey]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("publishable over"), "{}", text(&ok));

    let file = &tenant_files(&src)[1];
    set_line(file, "name = ", "name = \"Renamed Without A Bump\"");
    let before = std::fs::read_dir(fx.store_dir().join("snapshots"))
        .expect("snapshots")
        .count();
    let out = validate(&["--trusted-key", &pubkey]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("the content changed but the version stays"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_dir(fx.store_dir().join("snapshots"))
            .expect("snapshots")
            .count(),
        before,
        "validate writes nothing"
    );
}

/// Runs `rollback --to N` on the fixture's store.
fn rollback_to(fx: &Fixture, to: u64) -> Output {
    Command::new(bin("strata-publisher"))
        .args(["rollback", "--to", &to.to_string(), "--key"])
        .arg(&fx.key_path)
        .arg("--store")
        .arg(format!("file://{}", fx.store_dir().display()))
        .output()
        .expect("rollback")
}

/// The rollback guard also holds for Layer 1 (a bad base prompt rolled
/// back is not brought back by the next publish), and after two rollbacks
/// in a row both versions stay taken back (an outside attack found both
/// published).
#[test]
fn rolled_back_layer1_and_twice_rolled_back_tenants_are_not_brought_back() {
    let fx = Fixture::new();
    let (src, _) = fx.compile("v1", 3);
    assert!(publish(&fx, &src).status.success());
    let good_layer1 = std::fs::read_to_string(src.join("layer1.toml")).expect("layer1");
    let bad_layer1 = good_layer1.replacen(
        "You are a voice receptionist",
        "You are a hasty voice receptionist",
        1,
    );
    std::fs::write(src.join("layer1.toml"), &bad_layer1).expect("write");
    assert!(publish(&fx, &src).status.success());
    assert!(rollback_to(&fx, 1).status.success());
    let out = publish(&fx, &src);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("Layer 1: as in version 2"),
        "{}",
        text(&out)
    );
    std::fs::write(src.join("layer1.toml"), &good_layer1).expect("write");

    // Two bad tenant versions, rolled back twice: 5 → 4's rollback to 2,
    // then to 1.
    let file = tenant_files(&src).remove(0);
    set_line(&file, "version = ", "version = \"8.0.0\"");
    assert!(publish(&fx, &src).status.success(), "v4");
    set_line(&file, "version = ", "version = \"8.0.1\"");
    assert!(publish(&fx, &src).status.success(), "v5");
    assert!(rollback_to(&fx, 4).status.success());
    assert!(rollback_to(&fx, 1).status.success());
    let out = publish(&fx, &src);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("as in version 5"), "{}", text(&out));
}

/// `--agent-max-bundle-bytes` says what the channel's agents accept: a
/// snapshot over it is refused before signing (and one within a raised
/// limit is published: the 1M-tenant channel's way past the 1 GiB default).
#[test]
fn the_agents_raised_or_lowered_limit_is_what_a_publish_checks_against() {
    let fx = Fixture::new();
    let (src, _) = fx.compile("v1", 20);
    let out = publish_with(&fx, &src, &["--agent-max-bundle-bytes", "4096"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("agents refuse more than 4096 (max_bundle_bytes)"),
        "{}",
        text(&out)
    );
    assert_eq!(bundles(&fx), 0, "nothing was written");
    let out = publish_with(&fx, &src, &["--agent-max-bundle-bytes", "17179869184"]);
    assert!(out.status.success(), "{}", text(&out));
}
