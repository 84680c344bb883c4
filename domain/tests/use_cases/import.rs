//! Chamber import: every row checked, row numbers kept, all or nothing unless asked otherwise.

use std::time::Duration;

use chamberlain_domain::model::{PageRequest, PageSize, Role, SectionId};
use chamberlain_domain::ports::{ChamberChange, ChamberChanges as _, ChamberFilter};
use chamberlain_domain::usecases::{
    Actor, ImportMode, NewChamber, NewDetector, NewSection, UseCaseError,
};

use crate::support::Harness;

fn row(section_id: SectionId, name: &str, url: &str) -> NewChamber {
    NewChamber {
        section_id,
        name: name.into(),
        url: url.into(),
        format: "json".into(),
        interval: Duration::from_secs(5),
        timeout: None,
        detectors: vec![NewDetector {
            name: "t".into(),
            key: "/t".into(),
            ..Default::default()
        }],
    }
}

async fn setup(h: &Harness, label: &str) -> (Actor, SectionId) {
    let op = h.tenant(label, Role::Operator).await;
    let s = h
        .admin
        .create_section(
            &op,
            NewSection {
                name: "hall".into(),
                description: String::new(),
            },
        )
        .await
        .unwrap();
    (op, s.id)
}

async fn stored(h: &Harness, op: &Actor) -> Vec<String> {
    let page = PageRequest::first(PageSize::new(1000).unwrap());
    let mut names: Vec<String> = h
        .admin
        .list_chambers(op, ChamberFilter::default(), page)
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|c| c.name.as_str().to_owned())
        .collect();
    names.sort();
    names
}

/// A file with every kind of bad row: each is reported with its row and field.
async fn bad_rows(
    h: &Harness,
    op: &Actor,
    s: SectionId,
) -> chamberlain_domain::usecases::ChamberImport {
    h.json_chamber(op, "existing").await;
    let mut import = h.admin.begin_import(op).unwrap();
    import
        .add(row(s, "good-0", "http://10.0.0.1/"))
        .await
        .unwrap();
    import
        .add(row(s, "bad-url", "ftp://10.0.0.1/"))
        .await
        .unwrap();
    import
        .add(row(SectionId::random(), "lost", "http://10.0.0.1/"))
        .await
        .unwrap();
    import
        .add(row(s, "good-3", "http://10.0.0.1/"))
        .await
        .unwrap();
    import
        .add(row(s, "good-0", "http://10.0.0.1/"))
        .await
        .unwrap();
    let existing_section = h
        .admin
        .list_chambers(op, ChamberFilter::default(), PageRequest::default())
        .await
        .unwrap()
        .items[0]
        .section_id;
    import
        .add(row(existing_section, "existing", "http://10.0.0.1/"))
        .await
        .unwrap();
    let mut no_detectors = row(s, "empty", "http://10.0.0.1/");
    no_detectors.detectors.clear();
    import.add(no_detectors).await.unwrap();
    import
}

fn fields(report: &[chamberlain_domain::usecases::RowRejection]) -> Vec<(usize, &str)> {
    report.iter().map(|r| (r.row, &*r.error.field)).collect()
}

#[tokio::test]
async fn one_bad_row_and_nothing_is_created() {
    let h = Harness::new();
    let (op, s) = setup(&h, "all-or-nothing").await;
    let import = bad_rows(&h, &op, s).await;
    assert_eq!(import.rows(), 7);
    let report = import.commit(ImportMode::AllOrNothing).await.unwrap();
    assert!(report.created.is_empty());
    assert_eq!(
        fields(&report.rejected),
        vec![
            (1, "chamber.url"),
            (2, "chamber.section_id"),
            (4, "chamber.name"),
            (5, "chamber.name"),
            (6, "chamber.detectors"),
        ]
    );
    assert_eq!(stored(&h, &op).await, vec!["existing"]);
}

#[tokio::test]
async fn skipping_refused_rows_creates_the_rest_and_announces_them() {
    let h = Harness::new();
    let (op, s) = setup(&h, "skip").await;
    let import = bad_rows(&h, &op, s).await;
    let mut feed = h.changes.subscribe().await.unwrap();
    let report = import.commit(ImportMode::SkipRefused).await.unwrap();
    assert_eq!(report.rejected.len(), 5);
    let created: Vec<&str> = report
        .created
        .iter()
        .map(|c| c.chamber.name.as_str())
        .collect();
    assert_eq!(created, vec!["good-0", "good-3"]);
    assert_eq!(stored(&h, &op).await, vec!["existing", "good-0", "good-3"]);
    for expected in &report.created {
        match feed.next().await.expect("feed open") {
            ChamberChange::Upserted { chamber } => assert_eq!(chamber.id, expected.chamber.id),
            other => panic!("expected an upsert, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_clean_file_is_created_whole() {
    let h = Harness::new();
    let (op, s) = setup(&h, "clean").await;
    let mut import = h.admin.begin_import(&op).unwrap();
    for i in 0..300 {
        import
            .add(row(s, &format!("c-{i:03}"), "http://10.0.0.1/"))
            .await
            .unwrap();
    }
    let report = import.commit(ImportMode::AllOrNothing).await.unwrap();
    assert!(report.rejected.is_empty());
    assert_eq!(report.created.len(), 300);
    assert_eq!(stored(&h, &op).await.len(), 300);
}

#[tokio::test]
async fn a_name_taken_between_check_and_commit_is_refused_like_any_other() {
    let h = Harness::new();
    let (op, s) = setup(&h, "race").await;
    let mut import = h.admin.begin_import(&op).unwrap();
    import.add(row(s, "a", "http://10.0.0.1/")).await.unwrap();
    import.add(row(s, "b", "http://10.0.0.1/")).await.unwrap();
    // Someone else creates "b" after the row was checked.
    h.admin
        .create_chamber(&op, row(s, "b", "http://10.0.0.2/"))
        .await
        .unwrap();
    let report = import.commit(ImportMode::SkipRefused).await.unwrap();
    assert_eq!(fields(&report.rejected), vec![(1, "chamber.name")]);
    assert_eq!(report.created.len(), 1);
    assert_eq!(stored(&h, &op).await, vec!["a", "b"]);
}

#[tokio::test]
async fn viewers_cannot_import_and_tenants_stay_apart() {
    let h = Harness::new();
    let (op, s) = setup(&h, "tenant-a").await;
    let viewer = Actor {
        role: Role::Viewer,
        ..op
    };
    assert!(matches!(
        h.admin.begin_import(&viewer),
        Err(UseCaseError::Forbidden(_))
    ));
    // Another organization's section is unknown to this one.
    let (other, _) = setup(&h, "tenant-b").await;
    let mut import = h.admin.begin_import(&other).unwrap();
    import
        .add(row(s, "intruder", "http://10.0.0.1/"))
        .await
        .unwrap();
    let report = import.commit(ImportMode::AllOrNothing).await.unwrap();
    assert_eq!(fields(&report.rejected), vec![(0, "chamber.section_id")]);
    assert!(stored(&h, &op).await.is_empty());
}
