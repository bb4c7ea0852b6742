//! Schedules with a manual clock: a run starts at each cron time, a time
//! that comes while the previous run is active is skipped and recorded.

use berth_core::ManualClock;
use berth_core::job::RunState;
use berth_core::spec::Format;
use berth_jobs::{Fired, JobSpec, Jobs, Scheduler};
use berth_store::Store;
use std::sync::Arc;

/// 2027-01-15T10:00:30Z.
const START: i64 = 1_800_007_230_000;
const MINUTE: i64 = 60_000;

#[tokio::test]
async fn a_schedule_fires_at_its_times_and_skips_one_while_the_previous_run_is_active() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path()).unwrap());
    let clock = Arc::new(ManualClock::at(START));
    let jobs = Jobs::sqlite(store, clock.clone());
    let spec = JobSpec::parse(
        "name = \"nightly\"\nrepositories = [{ url = \"https://git.example.com/a.git\" }]\n\
         [[steps]]\nrun = \"true\"\n[run]\nschedule = \"*/5 * * * *\"\n",
        Format::Toml,
    )
    .unwrap();
    jobs.register(&spec).unwrap();
    let scheduler = Scheduler::new(jobs.clone());
    assert!(scheduler.tick().await.unwrap().is_empty());
    assert!(jobs.runs("nightly").unwrap().is_empty());

    // 10:05 comes: a run starts.
    clock.advance_ms(5 * MINUTE);
    let fired = scheduler.tick().await.unwrap();
    let [Fired::Started { at, run, .. }] = &fired[..] else {
        panic!("{fired:?}")
    };
    assert_eq!(at % (5 * MINUTE), 0);
    assert_eq!(run.trigger, "schedule");
    assert_eq!(jobs.runs("nightly").unwrap().len(), 1);

    // 10:10 comes while that run is still active: skipped and recorded.
    clock.advance_ms(5 * MINUTE);
    let fired = scheduler.tick().await.unwrap();
    assert!(matches!(&fired[..], [Fired::Skipped { .. }]), "{fired:?}");
    assert_eq!(jobs.runs("nightly").unwrap().len(), 1);
    let skipped = jobs.skipped_times("nightly").unwrap();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].at, at + 5 * MINUTE);
    assert!(skipped[0].reason.contains(&run.id), "{skipped:?}");

    // Once it ended, 10:15 starts the next run; a tick in between does nothing.
    jobs.cancel(&run.id, None).await.unwrap();
    assert_eq!(jobs.run(&run.id).unwrap().run.state, RunState::Cancelled);
    clock.advance_ms(MINUTE);
    assert!(scheduler.tick().await.unwrap().is_empty());
    clock.advance_ms(4 * MINUTE);
    let fired = scheduler.tick().await.unwrap();
    assert!(matches!(&fired[..], [Fired::Started { .. }]), "{fired:?}");
    assert_eq!(jobs.runs("nightly").unwrap().len(), 2);

    // Turned off, it starts nothing more.
    jobs.schedule("nightly", None).unwrap();
    clock.advance_ms(60 * MINUTE);
    assert!(scheduler.tick().await.unwrap().is_empty());
}
