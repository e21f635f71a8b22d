//! The catalogue conformance suite: every case runs against both backends, on fresh storage,
//! so that what one backend does the other does too (orderings, counts, refusals,
//! transactions). PostgreSQL runs as a throwaway server on loopback
//! (`scripts/throwaway-postgres.sh`), one database per case.

use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicU32, Ordering},
    },
};

use super::{
    Failure,
    catalog::{Activation, Catalog, ExampleRow, Fence, Lease, StoreError, UpsertCounts},
    postgres::PostgresCatalog,
    sqlite::SqliteCatalog,
};
use crate::{
    projects::spec::{ProjectSpec, tests::spec},
    training::record::{JobRecord, JobState, Manifest, Mode, TrainingParams},
};

/// A backend under test.
pub(crate) trait Backend {
    /// Opens a catalogue on new, empty storage.
    fn create(&mut self) -> Box<dyn Catalog>;
    /// Opens the storage last created again, as a restarted server would.
    fn reopen(&mut self) -> Box<dyn Catalog>;
    /// Overwrites project `id`'s stored spec with text that is not a spec.
    fn corrupt_spec(&mut self, id: &str);
    /// Overwrites the stored manifests of project `id`'s versions with text that is not one.
    fn corrupt_manifests(&mut self, id: &str);
    /// Overwrites job `job_id`'s stored record with text that is not one (another build's).
    fn corrupt_job(&mut self, job_id: &str);
}

struct Sqlite {
    dir: Option<tempfile::TempDir>,
}

impl Sqlite {
    fn path(&self) -> std::path::PathBuf {
        self.dir.as_ref().expect("created").path().join("alps.db")
    }
}

impl Backend for Sqlite {
    fn create(&mut self) -> Box<dyn Catalog> {
        self.dir = Some(tempfile::tempdir().unwrap());
        self.reopen()
    }

    fn reopen(&mut self) -> Box<dyn Catalog> {
        Box::new(SqliteCatalog::open(&self.path()).unwrap())
    }

    fn corrupt_spec(&mut self, id: &str) {
        let connection = rusqlite::Connection::open(self.path()).unwrap();
        connection.execute("UPDATE projects SET spec = '{' WHERE id = ?1", [id]).unwrap();
    }

    fn corrupt_manifests(&mut self, id: &str) {
        let connection = rusqlite::Connection::open(self.path()).unwrap();
        connection.execute("UPDATE model_versions SET manifest = '{' WHERE project_id = ?1", [id]).unwrap();
    }

    fn corrupt_job(&mut self, job_id: &str) {
        let connection = rusqlite::Connection::open(self.path()).unwrap();
        connection.execute("UPDATE jobs SET record = '{' WHERE job_id = ?1", [job_id]).unwrap();
    }
}

/// The throwaway server (its script, URL and CA file), started on first use. The script stops
/// it when this process ends and closes its standard input.
fn throwaway() -> &'static (Child, String, std::path::PathBuf) {
    static SERVER: OnceLock<(Child, String, std::path::PathBuf)> = OnceLock::new();
    SERVER.get_or_init(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/throwaway-postgres.sh");
        let mut child =
            Command::new(script).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("run the script");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let url = lines.next().and_then(Result::ok).unwrap_or_default();
        assert!(url.starts_with("postgres://"), "no PostgreSQL for the tests (see the script's error above)");
        let ca = lines.next().and_then(Result::ok).expect("the CA file's path");
        (child, url, ca.into())
    })
}

/// The throwaway server's URL (`postgres://postgres:PASSWORD@127.0.0.1:PORT/postgres`).
pub(crate) fn postgres_server() -> &'static str {
    &throwaway().1
}

/// The CA certificate (PEM) that signed the throwaway server's TLS certificate (for 127.0.0.1).
pub(crate) fn postgres_ca() -> &'static std::path::Path {
    &throwaway().2
}

/// A new, empty database on the throwaway server; its URL.
pub(crate) fn postgres_database() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let server = postgres_server();
    let name = format!("alps_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
    let mut client = postgres::Client::connect(server, postgres::NoTls).unwrap();
    client.batch_execute(&format!("CREATE DATABASE {name}")).unwrap();
    format!("{}/{name}", server.rsplit_once('/').unwrap().0)
}

struct Postgres {
    url: String,
}

impl Backend for Postgres {
    fn create(&mut self) -> Box<dyn Catalog> {
        self.url = postgres_database();
        self.reopen()
    }

    fn reopen(&mut self) -> Box<dyn Catalog> {
        Box::new(PostgresCatalog::open(&self.url, None).unwrap())
    }

    fn corrupt_spec(&mut self, id: &str) {
        let mut client = postgres::Client::connect(&self.url, postgres::NoTls).unwrap();
        client.execute("UPDATE projects SET spec = '{' WHERE id = $1", &[&id]).unwrap();
    }

    fn corrupt_manifests(&mut self, id: &str) {
        let mut client = postgres::Client::connect(&self.url, postgres::NoTls).unwrap();
        client.execute("UPDATE model_versions SET manifest = '{' WHERE project_id = $1", &[&id]).unwrap();
    }

    fn corrupt_job(&mut self, job_id: &str) {
        let mut client = postgres::Client::connect(&self.url, postgres::NoTls).unwrap();
        client.execute("UPDATE jobs SET record = '{' WHERE job_id = $1", &[&job_id]).unwrap();
    }
}

type Case = fn(&mut dyn Backend);

/// Every case of the suite, by name.
const CASES: &[(&str, Case)] = &[
    ("a catalogue keeps its identity; another has another", identity),
    ("a catalogue belongs with the first data dir bound to it", data_dir_binding),
    ("projects survive reopening; upsert keeps the creation time", projects_survive_reopening),
    ("an upsert that starts over resets the active version", upsert_starts_over),
    ("a version is activated only if it fits the stored spec, and the time is kept", activation_checks_fit),
    ("the newest label revision wins in every arrival order", newest_revision_wins),
    ("unversioned labels always apply; replays refresh the revision", unversioned_labels),
    ("examples page bytewise; counts, deletes and references agree", examples_page_and_count),
    ("a batch that names an example twice applies in order", batch_in_order),
    ("versions are numbered, listed newest first, unique", versions_are_numbered),
    ("jobs are replaced by id, listed newest first, unfinished found", jobs_round_trip),
    ("a project has one queued job, taken or cancelled once", one_queued_job),
    ("an unreadable job is listed without a record, ended in its own project only, its record kept", unreadable_job),
    ("deleting a project deletes what belongs to it", delete_cascades),
    ("a server alone on its catalogue always holds the sole training lease", the_sole_lease),
];

fn run_suite(backend: &mut dyn Backend) {
    for (name, case) in CASES {
        eprintln!("case: {name}");
        case(backend);
    }
}

#[test]
fn sqlite_passes_the_catalogue_conformance_suite() {
    run_suite(&mut Sqlite { dir: None });
}

#[test]
fn postgres_passes_the_catalogue_conformance_suite() {
    run_suite(&mut Postgres { url: String::new() });
}

fn identity(backend: &mut dyn Backend) {
    let first = backend.create().identity().unwrap();
    assert_eq!(first.len(), 32, "{first}");
    assert!(first.bytes().all(|b| b.is_ascii_hexdigit()), "{first}");
    assert_eq!(backend.reopen().identity().unwrap(), first, "stable");
    assert_ne!(backend.create().identity().unwrap(), first, "random");
}

fn data_dir_binding(backend: &mut dyn Backend) {
    let catalog = backend.create();
    assert_eq!(catalog.data_dir().unwrap(), None);
    assert_eq!(catalog.bind_data_dir("dir-a").unwrap(), None, "the first binds");
    assert_eq!(catalog.bind_data_dir("dir-a").unwrap(), None, "again: the same");
    assert_eq!(catalog.bind_data_dir("dir-b").unwrap().as_deref(), Some("dir-a"), "another is refused");
    drop(catalog);
    assert_eq!(backend.reopen().data_dir().unwrap().as_deref(), Some("dir-a"), "kept");
}

fn projects_survive_reopening(backend: &mut dyn Backend) {
    let catalog = backend.create();
    assert!(catalog.upsert_project(&spec(), 1000, "untrained", &|_| unreachable!("nothing stored")).unwrap());
    let mut changed = spec();
    changed.mc_iterations = 7;
    assert!(!catalog.upsert_project(&changed, 2000, "untrained", &|_| false).unwrap());
    drop(catalog);
    let catalog = backend.reopen();
    let stored = catalog.project("cars").unwrap().unwrap();
    assert_eq!(stored.spec, changed);
    assert_eq!(stored.created_unix_ms, 1000);
    assert_eq!(stored.active_version, "untrained");
    let mut boats = spec();
    boats.id = "Boats".into();
    catalog.upsert_project(&boats, 0, "untrained", &|_| false).unwrap();
    let ids: Vec<_> = catalog.projects().unwrap().into_iter().map(|p| p.spec.id).collect();
    assert_eq!(ids, ["Boats", "cars"], "bytewise: upper case first");
    assert!(catalog.delete_project("cars").unwrap());
    assert!(!catalog.delete_project("cars").unwrap());
    assert!(catalog.project("cars").unwrap().is_none());
}

fn upsert_starts_over(backend: &mut dyn Backend) {
    let catalog = backend.create();
    catalog.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
    catalog.reset_active_version("cars", "v3").unwrap();
    let mut changed = spec();
    changed.mc_iterations = 7;
    let kept = catalog.upsert_project(&changed, 0, "untrained", &|stored: &ProjectSpec| {
        assert_eq!(stored, &spec(), "the decision sees the stored spec");
        false
    });
    assert!(!kept.unwrap());
    assert_eq!(catalog.project("cars").unwrap().unwrap().active_version, "v3");
    changed.classes.push("bus".into());
    catalog.upsert_project(&changed, 0, "untrained", &|_| true).unwrap();
    let stored = catalog.project("cars").unwrap().unwrap();
    assert_eq!((stored.spec, stored.active_version.as_str()), (changed.clone(), "untrained"));
    // An unreadable stored spec is reported, then replaced, and the project starts over.
    catalog.reset_active_version("cars", "v4").unwrap();
    backend.corrupt_spec("cars");
    let unreadable = catalog.project("cars").unwrap_err();
    assert!(matches!(unreadable, StoreError::Corrupt { .. }), "{unreadable}");
    assert_eq!(unreadable.failure(), Failure::Permanent);
    catalog.upsert_project(&changed, 0, "untrained", &|_| unreachable!("no spec to compare")).unwrap();
    let stored = catalog.project("cars").unwrap().unwrap();
    assert_eq!((stored.spec, stored.active_version.as_str()), (changed, "untrained"));
}

fn activation_checks_fit(backend: &mut dyn Backend) {
    let catalog = backend.create();
    catalog.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
    assert_eq!(catalog.activate_version("cars", "v1", &|_, _| true, None).unwrap(), Activation::NoSuchVersion);
    let made = Manifest { job_id: "made for cars".into(), ..Manifest::example("cars", 1) };
    catalog.record_version(&made, 0).unwrap();
    let refused = catalog.activate_version(
        "cars",
        "v1",
        &|manifest, stored| {
            assert_eq!((manifest, stored), (&made, &spec()), "the check sees both");
            false
        },
        None,
    );
    assert_eq!(refused.unwrap(), Activation::Unfit);
    let stored = catalog.project("cars").unwrap().unwrap();
    assert_eq!((stored.active_version.as_str(), stored.activated_unix_ms), ("untrained", 0), "nothing changed");
    let before = crate::clock::now_unix_ms();
    assert_eq!(catalog.activate_version("cars", "v1", &|_, _| true, None).unwrap(), Activation::Activated);
    let stored = catalog.project("cars").unwrap().unwrap();
    assert_eq!(stored.active_version, "v1");
    let activated = stored.activated_unix_ms;
    assert!((before..=crate::clock::now_unix_ms()).contains(&activated), "{before} <= {activated}");
    // Activating the active version again is no new activation: its time stays.
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert_eq!(catalog.activate_version("cars", "v1", &|_, _| true, None).unwrap(), Activation::Activated);
    assert_eq!(catalog.projects().unwrap()[0].activated_unix_ms, activated);
    assert_eq!(catalog.activate_version("boats", "v1", &|_, _| true, None).unwrap(), Activation::NoSuchVersion);
}

pub(super) fn labelled(id: &str, class: &str, revision: u64) -> ExampleRow {
    ExampleRow {
        external_id: id.into(),
        class_name: class.into(),
        sha256: format!("{class:0>64}"),
        size_bytes: 4,
        tensor_shape: None,
        metadata: BTreeMap::new(),
        updated_unix_ms: 0,
        label_revision: revision,
    }
}

fn newest_revision_wins(backend: &mut dyn Backend) {
    let updates = [labelled("task-1", "a", 10), labelled("task-1", "b", 20), labelled("task-1", "c", 30)];
    let orders = [[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]];
    for order in orders {
        let catalog = backend.create();
        catalog.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
        let mut stale = 0;
        for i in order {
            stale += catalog.upsert_examples("cars", &[updates[i].clone()]).unwrap().stale;
        }
        let stored = catalog.examples("cars", "", 10).unwrap();
        assert_eq!((stored[0].class_name.as_str(), stored[0].label_revision), ("c", 30), "order {order:?}");
        // Every update that arrived after a newer one was refused.
        let expected = order.iter().enumerate().filter(|&(k, &i)| order[..k].iter().any(|&j| j > i)).count() as u64;
        assert_eq!(stale, expected, "order {order:?}");
    }
}

fn unversioned_labels(backend: &mut dyn Backend) {
    let catalog = backend.create();
    catalog.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
    let upsert = |example| catalog.upsert_examples("cars", &[example]).unwrap();
    upsert(labelled("task-1", "a", 50));
    let counts = upsert(labelled("task-1", "b", 0));
    assert_eq!((counts.updated, counts.stale), (1, 0), "revision 0 is last-write-wins");
    assert_eq!(catalog.examples("cars", "", 10).unwrap()[0].label_revision, 0);
    // The same label again with a revision: unchanged, but later updates are ordered by it.
    assert_eq!(upsert(labelled("task-1", "b", 40)).unchanged, 1);
    assert_eq!(upsert(labelled("task-1", "a", 39)).stale, 1);
    assert_eq!(catalog.examples("cars", "", 10).unwrap()[0].class_name, "b");
    // u64 revisions above i64::MAX keep their order.
    upsert(labelled("task-1", "a", u64::MAX - 1));
    assert_eq!(upsert(labelled("task-1", "c", 1 << 63)).stale, 1);
    assert_eq!(catalog.examples("cars", "", 10).unwrap()[0].label_revision, u64::MAX - 1);
}

fn examples_page_and_count(backend: &mut dyn Backend) {
    let catalog = backend.create();
    catalog.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
    let mut tensor = labelled("b", "sedan", 0);
    tensor.tensor_shape = Some(vec![3, 8, 8]);
    tensor.metadata = BTreeMap::from([("source".into(), "camera 2".into())]);
    tensor.size_bytes = 768;
    tensor.updated_unix_ms = 1_700_000_000_000;
    let batch = [labelled("a", "sedan", 0), tensor.clone(), labelled("B", "truck", 0), labelled("é", "truck", 0)];
    let counts = catalog.upsert_examples("cars", &batch).unwrap();
    assert_eq!(counts, UpsertCounts { inserted: 4, ..Default::default() });
    assert_eq!(catalog.upsert_examples("cars", &batch).unwrap().unchanged, 4, "a replay changes nothing");
    let ids = |after: &str, limit| -> Vec<String> {
        catalog.examples("cars", after, limit).unwrap().into_iter().map(|e| e.external_id).collect()
    };
    assert_eq!(ids("", 10), ["B", "a", "b", "é"], "bytewise order");
    assert_eq!(ids("", 2), ["B", "a"]);
    assert_eq!(ids("a", 2), ["b", "é"]);
    assert!(ids("", 0).is_empty());
    assert_eq!(ids("", usize::MAX).len(), 4, "no limit");
    assert_eq!(catalog.examples("cars", "a", 1).unwrap()[0], tensor, "every field round-trips");
    let mut per_class = catalog.count_examples("cars").unwrap();
    per_class.sort();
    assert_eq!(per_class, [("sedan".to_owned(), 2), ("truck".to_owned(), 2)]);
    let referenced = catalog.referenced_blobs().unwrap();
    assert_eq!(referenced.len(), 2, "{referenced:?}");
    assert!(referenced.contains(&format!("{:0>64}", "truck")));
    let gone = ["a".to_owned(), "missing".to_owned(), "a".to_owned()];
    assert_eq!(catalog.delete_examples("cars", &gone).unwrap(), (1, 2));
    assert_eq!(ids("", 10), ["B", "b", "é"]);
    let unknown = catalog.upsert_examples("boats", &[labelled("a", "sedan", 0)]).unwrap_err();
    assert_eq!(unknown.failure(), Failure::Permanent, "{unknown}");
}

fn batch_in_order(backend: &mut dyn Backend) {
    let catalog = backend.create();
    catalog.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
    let batch = [
        labelled("a", "x", 5),
        labelled("a", "y", 3),
        labelled("b", "x", 0),
        labelled("a", "x", 5),
        labelled("a", "z", 0),
        labelled("b", "x", 0),
    ];
    let counts = catalog.upsert_examples("cars", &batch).unwrap();
    assert_eq!(counts, UpsertCounts { inserted: 2, updated: 1, unchanged: 2, stale: 1 });
    let stored: Vec<_> =
        catalog.examples("cars", "", 10).unwrap().into_iter().map(|e| (e.class_name, e.label_revision)).collect();
    assert_eq!(stored, [("z".to_owned(), 0), ("x".to_owned(), 0)]);
}

fn versions_are_numbered(backend: &mut dyn Backend) {
    let catalog = backend.create();
    catalog.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
    assert_eq!(catalog.next_version_number("cars").unwrap(), 1);
    let (one, two) =
        (Manifest::example("cars", 1), Manifest { weights_sha256: "2".repeat(64), ..Manifest::example("cars", 2) });
    catalog.record_version(&one, 10).unwrap();
    catalog.record_version(&two, 20).unwrap();
    assert_eq!(catalog.next_version_number("cars").unwrap(), 3);
    let versions = || -> Vec<_> {
        catalog
            .versions("cars")
            .unwrap()
            .into_iter()
            .map(|v| (v.version, v.number, v.manifest, v.created_unix_ms))
            .collect()
    };
    assert_eq!(versions(), [("v2".into(), 2, two.clone(), 20), ("v1".into(), 1, one, 10)], "manifests read back whole");
    let again = Manifest { job_id: "again".into(), ..two };
    let duplicate = catalog.record_version(&again, 30).unwrap_err();
    assert_eq!(duplicate.failure(), Failure::Permanent, "{duplicate}");
    assert_eq!(versions().len(), 2, "nothing recorded");
    assert!(catalog.record_version(&Manifest::example("boats", 1), 0).is_err(), "no such project");
    // Numbers beyond i32 (a 32-bit column would wrap them).
    catalog.record_version(&Manifest::example("cars", 3_000_000_000), 40).unwrap();
    assert_eq!(catalog.next_version_number("cars").unwrap(), 3_000_000_001);
    assert_eq!(catalog.versions("cars").unwrap()[0].number, 3_000_000_000);
    // A manifest this build cannot read (another build's, or edited by hand) is an error, not
    // a version without weights; activating it changes nothing.
    backend.corrupt_manifests("cars");
    let unreadable = catalog.versions("cars").unwrap_err();
    assert!(matches!(&unreadable, StoreError::Corrupt { id, .. } if id.starts_with("cars v")), "{unreadable}");
    assert_eq!(unreadable.failure(), Failure::Permanent);
    let refused = catalog.activate_version("cars", "v1", &|_, _| true, None).unwrap_err();
    assert!(matches!(refused, StoreError::Corrupt { .. }), "{refused}");
    assert_eq!(catalog.project("cars").unwrap().unwrap().active_version, "untrained");
}

/// Job `job_id` of `project` in `state`, triggered at `created_unix_ms`; `note` (its error
/// text) tells two records of one job apart.
pub(super) fn job(job_id: &str, project: &str, state: JobState, created_unix_ms: i64, note: &str) -> JobRecord {
    let params = TrainingParams::defaults(Mode::HeadOnly, 1);
    let queued = JobRecord::queued(job_id.into(), project, params, false, "replica-1", 1);
    JobRecord { state, error: note.into(), created_unix_ms, ..queued }
}

fn jobs_round_trip(backend: &mut dyn Backend) {
    let catalog = backend.create();
    catalog.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
    let a_done = job("job-a", "cars", JobState::Succeeded, 100, "a done");
    let b_running = job("job-b", "cars", JobState::Running, 200, "b running");
    let c_done = job("job-c", "cars", JobState::Cancelled, 200, "c done");
    catalog.save_job(&job("job-a", "cars", JobState::Queued, 100, "a queued")).unwrap();
    for record in [&b_running, &c_done, &a_done] {
        catalog.save_job(record).unwrap();
    }
    let jobs = |limit| -> Vec<_> {
        catalog
            .jobs("cars", limit)
            .unwrap()
            .into_iter()
            .map(|j| (j.job_id, j.finished, j.record, j.created_unix_ms))
            .collect()
    };
    let row = |record: &JobRecord| {
        (record.job_id.clone(), record.state.is_terminal(), Some(record.clone()), record.created_unix_ms)
    };
    assert_eq!(jobs(10), [row(&c_done), row(&b_running), row(&a_done)], "newest first, then id; records whole");
    assert_eq!(jobs(1), [row(&c_done)]);
    assert_eq!(catalog.job("job-a").unwrap(), Some(a_done));
    assert_eq!(catalog.job("job-z").unwrap(), None);
    let unfinished: Vec<_> = catalog.unfinished_jobs().unwrap().into_iter().map(|job| job.record).collect();
    assert_eq!(unfinished, [Some(b_running.clone())]);
    // A cancellation asked of another replica: only of a job not finished, and kept when the
    // job's record is saved again.
    assert!(!catalog.cancel_requested("job-b").unwrap());
    assert!(catalog.request_cancel("job-b").unwrap());
    catalog.save_job(&job("job-b", "cars", JobState::Running, 200, "b still running")).unwrap();
    assert!(catalog.cancel_requested("job-b").unwrap());
    assert!(!catalog.request_cancel("job-c").unwrap(), "finished");
    assert!(!catalog.request_cancel("job-x").unwrap() && !catalog.cancel_requested("job-x").unwrap(), "unknown");
    // A finished job's record stands: a later save (a late replica) changes nothing.
    catalog.save_job(&job("job-c", "cars", JobState::Running, 200, "c resurrected")).unwrap();
    catalog.save_job(&job("job-c", "cars", JobState::Failed, 200, "c done again")).unwrap();
    assert_eq!(catalog.job("job-c").unwrap(), Some(c_done));
    catalog.save_job(&b_running).unwrap();
    assert!(catalog.save_job(&job("job-d", "boats", JobState::Running, 0, "d")).is_err(), "no such project");
}

fn one_queued_job(backend: &mut dyn Backend) {
    let catalog = backend.create();
    catalog.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
    let mut boats = spec();
    boats.id = "boats".into();
    catalog.upsert_project(&boats, 0, "untrained", &|_| false).unwrap();
    let queued = |id: &str, project: &str, created| job(id, project, JobState::Queued, created, id);
    // The id of the job queued before, if any.
    let enqueue = |id: &str, project: &str, created| {
        catalog.enqueue_job(&queued(id, project, created)).map(|before| before.map(|before| before.job_id))
    };
    assert_eq!(catalog.take_queued_job("cars").unwrap(), None);
    // Every trigger while one waits coalesces into it, whichever server it reached.
    assert_eq!(enqueue("job-a", "cars", 100).unwrap(), None);
    assert_eq!(catalog.enqueue_job(&queued("job-b", "cars", 200)).unwrap(), Some(queued("job-a", "cars", 100)));
    assert_eq!(enqueue("job-c", "boats", 200).unwrap(), None, "one per project");
    let row = |id: &str| catalog.jobs("cars", 10).unwrap().into_iter().find(|job| job.job_id == id);
    assert!(row("job-a").is_some_and(|job| job.queued && !job.finished));
    assert_eq!(row("job-b"), None);
    assert_eq!(catalog.unfinished_jobs().unwrap().len(), 2);
    // Taken once: then a trigger queues the next job.
    assert_eq!(catalog.take_queued_job("cars").unwrap(), Some(queued("job-a", "cars", 100)));
    assert_eq!(catalog.take_queued_job("cars").unwrap(), None);
    assert!(row("job-a").is_some_and(|job| !job.queued && !job.finished));
    let cancelled = |id: &str, created| job(id, "cars", JobState::Cancelled, created, "cancelled");
    assert!(!catalog.cancel_queued_job(&cancelled("job-a", 100)).unwrap(), "taken: its server cancels it");
    assert_eq!(enqueue("job-d", "cars", 300).unwrap(), None);
    // Cancelled before any server took it: ended, and no longer queued.
    assert!(catalog.cancel_queued_job(&cancelled("job-d", 300)).unwrap());
    assert!(row("job-d").is_some_and(|job| !job.queued && job.finished));
    assert_eq!(catalog.job("job-d").unwrap(), Some(cancelled("job-d", 300)));
    assert_eq!(catalog.take_queued_job("cars").unwrap(), None);
    // A queued job ended by a save (failed at a server's start) is no longer queued either.
    assert_eq!(enqueue("job-e", "cars", 400).unwrap(), None);
    catalog.save_job(&job("job-e", "cars", JobState::Failed, 400, "e interrupted")).unwrap();
    assert_eq!(catalog.take_queued_job("cars").unwrap(), None);
    assert_eq!(enqueue("job-f", "cars", 500).unwrap(), None);
    assert!(enqueue("job-g", "lorries", 500).is_err(), "no such project");
}

fn unreadable_job(backend: &mut dyn Backend) {
    let catalog = backend.create();
    catalog.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
    catalog.save_job(&job("job-x", "cars", JobState::Running, 100, "x")).unwrap();
    backend.corrupt_job("job-x");
    let unreadable = |error: StoreError| matches!(error, StoreError::Corrupt { .. });
    assert!(unreadable(catalog.job("job-x").unwrap_err()), "an error, not a missing job");
    let rows = catalog.unfinished_jobs().unwrap();
    assert_eq!((rows.len(), rows[0].record.as_ref()), (1, None), "listed, without a record");
    assert_eq!(catalog.jobs("cars", 10).unwrap()[0].record, None);
    assert!(!catalog.end_unreadable_job("job-x", "boats").unwrap(), "another project's");
    assert_eq!(catalog.unfinished_jobs().unwrap().len(), 1);
    assert!(catalog.end_unreadable_job("job-x", "cars").unwrap());
    assert!(!catalog.end_unreadable_job("job-x", "cars").unwrap(), "ended once");
    assert!(catalog.unfinished_jobs().unwrap().is_empty());
    assert!(unreadable(catalog.job("job-x").unwrap_err()), "its record kept as it was");
    // A queued job is not ended so: the server that takes it decides. A trigger meanwhile
    // queues nothing; taking it takes it, then says it cannot be read.
    catalog.enqueue_job(&job("job-q", "cars", JobState::Queued, 200, "q")).unwrap();
    backend.corrupt_job("job-q");
    assert!(!catalog.end_unreadable_job("job-q", "cars").unwrap());
    assert!(unreadable(catalog.enqueue_job(&job("job-r", "cars", JobState::Queued, 300, "r")).unwrap_err()));
    assert_eq!(catalog.unfinished_jobs().unwrap().len(), 1, "nothing more queued");
    assert!(unreadable(catalog.take_queued_job("cars").unwrap_err()));
    assert_eq!(catalog.take_queued_job("cars").unwrap(), None, "taken");
    assert!(catalog.end_unreadable_job("job-q", "cars").unwrap());
}

fn the_sole_lease(backend: &mut dyn Backend) {
    let catalog = backend.create();
    catalog.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
    let hour = std::time::Duration::from_secs(3600);
    // Two claims, as two triggers: neither waits for the other (one server decides).
    assert_eq!(catalog.claim_training("cars", "me", hour).unwrap(), Some(Lease::SOLE));
    assert_eq!(catalog.claim_training("cars", "me", hour).unwrap(), Some(Lease::SOLE));
    assert!(catalog.renew_training("cars", "me", Lease::SOLE, hour).unwrap());
    catalog.record_version(&Manifest::example("cars", 1), 0).unwrap();
    let fence = Some(Fence { replica: "me", lease: Lease::SOLE });
    assert_eq!(catalog.activate_version("cars", "v1", &|_, _| true, fence).unwrap(), Activation::Activated);
    catalog.release_training("cars", "me", Lease::SOLE).unwrap();
    // Its own unfinished jobs are recovered at its start, never taken over.
    catalog.save_job(&job("job-a", "cars", JobState::Running, 0, "a")).unwrap();
    assert!(catalog.projects_to_take_over().unwrap().is_empty());
}

fn delete_cascades(backend: &mut dyn Backend) {
    let catalog = backend.create();
    catalog.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
    catalog.upsert_examples("cars", &[labelled("a", "sedan", 0)]).unwrap();
    catalog.record_version(&Manifest::example("cars", 1), 0).unwrap();
    catalog.save_job(&job("job-a", "cars", JobState::Running, 0, "a")).unwrap();
    assert!(catalog.delete_project("cars").unwrap());
    catalog.upsert_project(&spec(), 0, "untrained", &|_| false).unwrap();
    assert!(catalog.examples("cars", "", 10).unwrap().is_empty());
    assert!(catalog.versions("cars").unwrap().is_empty());
    assert_eq!(catalog.next_version_number("cars").unwrap(), 1);
    assert_eq!(catalog.job("job-a").unwrap(), None);
    assert!(catalog.referenced_blobs().unwrap().is_empty());
}
