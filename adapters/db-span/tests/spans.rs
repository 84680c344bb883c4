//! Every method of a `#[db_port]` impl opens one `db` span named after the port and the method;
//! a method with its own `#[tracing::instrument]` keeps it.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chamberlain_db_span::db_port;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::Registry;

#[async_trait]
trait ShelfRepository {
    async fn put(&self, item: u32) -> u32;
    async fn count(&self) -> usize;
}

struct Store;

#[db_port("testdb")]
#[async_trait]
impl ShelfRepository for Store {
    async fn put(&self, item: u32) -> u32 {
        item + 1
    }

    #[tracing::instrument(name = "own", skip_all)]
    async fn count(&self) -> usize {
        0
    }
}

/// A span as opened: its name and its fields.
type Opened = (String, Vec<(String, String)>);

/// Every new span.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Opened>>>);

struct Fields(Vec<(String, String)>);

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        _: &tracing::span::Id,
        _: Context<'_, S>,
    ) {
        let mut fields = Fields(Vec::new());
        attrs.record(&mut fields);
        self.0
            .lock()
            .unwrap()
            .push((attrs.metadata().name().to_owned(), fields.0));
    }
}

#[tokio::test]
async fn each_method_gets_a_db_span_named_after_its_port_and_method() {
    let spans = Spans::default();
    let _guard = tracing::subscriber::set_default(Registry::default().with(spans.clone()));
    assert_eq!(Store.put(1).await, 2);
    assert_eq!(Store.count().await, 0);
    let seen = spans.0.lock().unwrap().clone();
    let field = |span: &Opened, name: &str| {
        span.1
            .iter()
            .find(|(f, _)| f == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[0].0, "db");
    assert_eq!(
        field(&seen[0], "otel.name").as_deref(),
        Some("db ShelfRepository::put")
    );
    assert_eq!(field(&seen[0], "db.system").as_deref(), Some("testdb"));
    assert_eq!(
        field(&seen[0], "db.operation").as_deref(),
        Some("ShelfRepository::put")
    );
    assert_eq!(seen[1].0, "own", "a method's own span is kept, not doubled");
}
