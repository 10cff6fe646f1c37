//! Commission, address choice and reconfigure on the doubles.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Bench, IMAGE};
use crate::adapters::runtime::{ContainerRuntime, ContainerSpec, PublishedPort};
use crate::error::Error;
use crate::model::instance::container_name;

const BOOT: Duration = Duration::from_millis(300);

fn ports(r: &crate::model::instance::InstanceRecord) -> [u16; 3] {
    [
        r.bindings.http_port,
        r.bindings.https_port,
        r.bindings.ssh_port,
    ]
}

/// A container of another client of the engine publishing `127.0.0.1:port`.
async fn foreign_container(b: &Bench, name: &str, port: u16) {
    let spec = ContainerSpec {
        name: name.into(),
        image: IMAGE.into(),
        ports: vec![PublishedPort {
            host_ip: "127.0.0.1".into(),
            host_port: port,
            container_port: 80,
        }],
        ..Default::default()
    };
    b.runtime.create(&spec).await.unwrap();
    b.runtime.start(name).await.unwrap();
}

#[tokio::test]
async fn a_commission_that_never_turns_healthy_leaves_nothing_behind() {
    let b = Bench::with_ports("20000-20002");
    b.gitlab.down.store(true, Ordering::SeqCst);
    let e = b
        .ctx
        .commission(Bench::request("web", BOOT))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Unhealthy { .. }), "{e}");
    assert!(
        e.to_string().contains("502"),
        "the probe's output is shown: {e}"
    );
    assert!(b.runtime.container_names().is_empty(), "no container left");
    assert_eq!(b.record("web").await, None, "no record left");
    assert!(!b.dirs("web").base.exists(), "no directory left");
    assert!(!b.intent_exists("web"), "no intent record left");
    // The name and the only three ports of the pool are free again.
    b.gitlab.down.store(false, Ordering::SeqCst);
    let r = b.commissioned("web").await;
    assert_eq!(ports(&r), [20000, 20001, 20002]);
    assert!(b.running("web").await);
}

#[tokio::test]
async fn a_commission_writes_gitlab_rb_from_the_image_template_before_the_first_boot() {
    let b = Bench::new();
    let mut request = Bench::request("web", BOOT);
    request.settings = vec!["gitlab_rails['time_zone']='Europe/Paris'".into()];
    b.ctx.commission(request).await.unwrap();
    let rb = std::fs::read_to_string(b.gitlab_rb("web")).unwrap();
    assert!(rb.starts_with("## GitLab's template"), "{rb}");
    assert!(
        rb.contains("gitlab_rails['time_zone'] = 'Europe/Paris'"),
        "{rb}"
    );
    let record = b.record("web").await.unwrap();
    assert!(rb.contains(&record.external_url), "{rb}");
}

#[tokio::test]
async fn a_taken_name_is_refused_and_the_instance_is_untouched() {
    let b = Bench::new();
    let before = b.commissioned("web").await;
    let e = b
        .ctx
        .commission(Bench::request("web", BOOT))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::AlreadyExists { .. }), "{e}");
    assert_eq!(b.record("web").await, Some(before));
    assert!(b.running("web").await);
}

#[tokio::test]
async fn addresses_skip_ports_held_by_instances_and_other_containers() {
    let b = Bench::with_ports("20000-20006");
    foreign_container(&b, "someone-else", 20000).await;
    let first = b.commissioned("one").await;
    assert_eq!(
        ports(&first),
        [20001, 20002, 20003],
        "20000 is held by a container"
    );
    let second = b.commissioned("two").await;
    assert_eq!(ports(&second), [20004, 20005, 20006]);
}

#[tokio::test]
async fn an_exhausted_pool_is_a_clear_conflict_and_reserves_nothing() {
    let b = Bench::with_ports("20000-20004");
    b.commissioned("one").await;
    let e = b
        .ctx
        .commission(Bench::request("two", BOOT))
        .await
        .unwrap_err();
    match &e {
        Error::Conflict(m) => assert!(
            m.contains("no free port left") && m.contains("[network] ports"),
            "{m}"
        ),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(b.record("two").await, None);
    assert!(!b.dirs("two").base.exists());
    assert!(!b.runtime.container_names().contains(&container_name("two")));
}

#[tokio::test]
async fn an_asked_port_that_is_taken_is_refused_naming_its_holder() {
    let b = Bench::new();
    let one = b.commissioned("one").await;
    let mut request = Bench::request("two", BOOT);
    request.addresses.http_port = Some(one.bindings.http_port);
    let e = b.ctx.commission(request).await.unwrap_err();
    assert!(
        matches!(&e, Error::Conflict(m) if m.contains("instance `one`") && m.contains("--http-port")),
        "{e}"
    );
    assert_eq!(b.record("two").await, None);
}

#[tokio::test]
async fn a_port_the_engine_refuses_at_start_is_replaced_by_the_next_free_ones() {
    // Something outside the engine (invisible to its port list) holds 20000: Docker
    // refuses the start, and the commission takes other ports.
    let b = Bench::new();
    b.runtime.occupy_host_port("127.0.0.1", 20000);
    let r = b.commissioned("web").await;
    assert!(!ports(&r).contains(&20000), "{:?}", ports(&r));
    assert!(r.external_url.contains(&r.bindings.http_port.to_string()));
    let info = b
        .runtime
        .inspect(&container_name("web"))
        .await
        .unwrap()
        .unwrap();
    assert!(info.running);
    assert!(info.ports.iter().all(|p| p.host_port != 20000));
}

#[tokio::test]
async fn a_reconfigure_gitlab_refuses_puts_the_previous_gitlab_rb_back() {
    let b = Bench::new();
    let before = b.commissioned("web").await;
    let rb_before = std::fs::read_to_string(b.gitlab_rb("web")).unwrap();
    b.gitlab.refuse_reconfigures.store(1, Ordering::SeqCst);
    let e = b
        .ctx
        .reconfigure("web", &["gitlab_rails['time_zone']='UTC'".into()], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::InvalidInput { message, .. } if message.contains("GitLab refused") && message.contains("bad setting")),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(b.gitlab_rb("web")).unwrap(),
        rb_before
    );
    assert_eq!(b.record("web").await, Some(before), "inventory unchanged");
    assert_eq!(
        b.reconfigures(),
        2,
        "the refused file, then the previous one"
    );
    assert!(!b.intent_exists("web"));
}

#[tokio::test]
async fn a_reconfigure_gitlab_does_not_survive_is_rolled_back() {
    let b = Bench::new();
    let before = b.commissioned("web").await;
    let rb_before = std::fs::read_to_string(b.gitlab_rb("web")).unwrap();
    *b.gitlab.breaks_on.lock().unwrap() = Some("puma['listen']".into());
    let e = b
        .ctx
        .reconfigure("web", &["puma['listen']='8.8.8.8'".into()], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(&e, Error::Unhealthy { message, .. } if message.contains("rolled back")),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(b.gitlab_rb("web")).unwrap(),
        rb_before
    );
    assert_eq!(b.record("web").await, Some(before), "inventory unchanged");
    assert!(
        !b.gitlab.down.load(Ordering::SeqCst),
        "GitLab answers again"
    );
    assert!(!b.intent_exists("web"));
}

#[tokio::test]
async fn a_reconfigure_gitlab_accepts_is_kept_in_file_and_inventory() {
    let b = Bench::new();
    b.commissioned("web").await;
    b.ctx
        .reconfigure("web", &["gitlab_rails['time_zone']='UTC'".into()], &[])
        .await
        .unwrap();
    let rb = std::fs::read_to_string(b.gitlab_rb("web")).unwrap();
    assert!(rb.contains("gitlab_rails['time_zone'] = 'UTC'"), "{rb}");
    assert_eq!(
        b.record("web").await.unwrap().settings,
        BTreeMap::from([("gitlab_rails['time_zone']".to_string(), "'UTC'".to_string())])
    );
    assert_eq!(b.reconfigures(), 1);
}
