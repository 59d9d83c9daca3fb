//! Traces: one span per cache operation with the tier that answered, and a
//! `c3.l2` child span (OpenTelemetry database attributes) for every L2 round
//! trip — none for an L1 hit, which does no I/O.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use support::TestDb;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::Registry;
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A recorded span: its name, its parent's name, and its fields.
#[derive(Debug, Clone)]
struct Rec {
    id: u64,
    name: &'static str,
    parent: Option<u64>,
    fields: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Rec>>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().to_owned(), v.to_owned());
    }
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.0.insert(f.name().to_owned(), format!("{v:?}"));
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let parent = if attrs.is_contextual() {
            ctx.current_span().id().map(Id::into_u64)
        } else {
            attrs.parent().map(Id::into_u64)
        };
        let mut fields = HashMap::new();
        attrs.record(&mut Fields(&mut fields));
        self.0.lock().unwrap().push(Rec {
            id: id.into_u64(),
            name: attrs.metadata().name(),
            parent,
            fields,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, _ctx: Context<'_, S>) {
        let mut spans = self.0.lock().unwrap();
        if let Some(r) = spans.iter_mut().rev().find(|r| r.id == id.into_u64()) {
            values.record(&mut Fields(&mut r.fields));
        }
    }
}

impl Spans {
    fn take(&self) -> Vec<Rec> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
}

fn children<'a>(all: &'a [Rec], of: &Rec) -> Vec<&'a Rec> {
    all.iter().filter(|r| r.parent == Some(of.id)).collect()
}

#[tokio::test]
async fn an_l1_hit_has_no_child_span_and_an_l2_hit_has_a_postgres_one() {
    let spans = Spans::default();
    let _guard = tracing::subscriber::set_default(Registry::default().with(spans.clone()));
    let db = TestDb::new("traces").await;
    let a = db.node().await;
    let b = db.builder().trace_keys(true).build().await.unwrap();
    a.set("user:1", &"Ada".to_owned()).await.unwrap();
    spans.take();

    // B has never seen the key: L2.
    assert!(b.get::<String>("user:1").await.unwrap().is_some());
    let all = spans.take();
    let get = all
        .iter()
        .find(|r| r.name == "c3.get")
        .expect("a c3.get span");
    assert_eq!(get.fields["c3.tier"], "l2", "{get:?}");
    assert_eq!(get.fields["c3.outcome"], "hit");
    assert_eq!(get.fields["c3.key"], "user:1", "keys only when opted in");
    let l2 = children(&all, get);
    assert_eq!(l2.len(), 1, "{all:#?}");
    assert_eq!(l2[0].name, "c3.l2");
    assert_eq!(l2[0].fields["db.system.name"], "postgresql");
    assert_eq!(l2[0].fields["db.operation.name"], "get");
    assert!(l2[0].fields["db.collection.name"].contains("cache_data"));

    // Now in B's L1: one span, no children, no I/O.
    let l2_calls = b.stats().l2_hits + b.stats().l2_misses;
    assert!(b.get::<String>("user:1").await.unwrap().is_some());
    let all = spans.take();
    assert_eq!(all.len(), 1, "{all:#?}");
    assert_eq!(all[0].name, "c3.get");
    assert_eq!(all[0].fields["c3.tier"], "l1");
    assert_eq!(b.stats().l2_hits + b.stats().l2_misses, l2_calls);

    // Node A did not opt in: no keys in its spans.
    a.get::<String>("user:1").await.unwrap();
    let all = spans.take();
    assert!(
        all.iter().all(|r| !r.fields.contains_key("c3.key")),
        "{all:#?}"
    );

    // Writes and loads: their own spans, with the L2 work beneath them.
    let opts = c3::core::LoadOptions::new();
    b.get_or_load("user:2", &opts, || async {
        Ok::<_, std::io::Error>(Some("Grace".to_owned()))
    })
    .await
    .unwrap();
    let all = spans.take();
    let load = all
        .iter()
        .find(|r| r.name == "c3.get_or_load")
        .expect("a load span");
    assert_eq!(load.fields["c3.tier"], "source", "{all:#?}");
    assert!(
        all.iter().any(|r| r.name == "c3.l2" && r.parent.is_some()),
        "the flight's L2 calls are inside the load's trace: {all:#?}"
    );
    b.delete("user:2").await.unwrap();
    let all = spans.take();
    let del = all
        .iter()
        .find(|r| r.name == "c3.delete")
        .expect("a delete span");
    assert_eq!(del.fields["c3.outcome"], "ok");
    assert_eq!(children(&all, del)[0].fields["db.operation.name"], "delete");
}

#[tokio::test]
async fn the_http_layer_span_carries_http_attributes_and_the_cache_status() {
    use axum::body::Body;
    use support::web::{Origin, cached, get, resp, send, stored};

    let spans = Spans::default();
    let _guard = tracing::subscriber::set_default(Registry::default().with(spans.clone()));
    let db = TestDb::new("http_traces").await;
    let c3 = db.node().await;
    let origin = Origin::new(|_, n| resp(&[("cache-control", "max-age=60")], format!("v{n}")));
    let svc = cached(&c3, &origin);
    let w = c3.stats().writes;
    send(&svc, get("http://app.test/x").body(Body::empty()).unwrap()).await;
    stored(&c3, w, 1).await;
    spans.take();
    send(&svc, get("http://app.test/x").body(Body::empty()).unwrap()).await;
    let all = spans.take();
    let http = all
        .iter()
        .find(|r| r.name == "c3.http")
        .expect("an HTTP span");
    assert_eq!(http.fields["http.request.method"], "GET");
    assert_eq!(http.fields["url.path"], "/x");
    assert_eq!(http.fields["http.response.status_code"], "200");
    assert!(
        http.fields["c3.cache_status"].starts_with("c3; hit"),
        "{http:?}"
    );
    let inner = children(&all, http);
    assert!(
        inner
            .iter()
            .any(|r| r.name == "c3.get" && r.fields["c3.tier"] == "l1"),
        "{all:#?}"
    );
}
