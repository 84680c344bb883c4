//! The routes: every `google.api.http` rule (and its `additional_bindings`) of the API's
//! methods, read from the descriptor set.

use http::Method;
use prost_reflect::{DescriptorPool, DynamicMessage, MethodDescriptor, Value};

use crate::template::{PathTemplate, TemplateError};

/// Where a request's body goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyRule {
    /// No body: fields not bound by the path come from the query.
    None,
    /// `body: "*"`: the body is the whole request message.
    Whole,
    /// `body: "field"`: the body is that field; the query fills the others.
    Field(String),
}

/// One HTTP binding of one RPC.
#[derive(Debug, Clone)]
pub struct Binding {
    pub method: Method,
    pub template: PathTemplate,
    pub body: BodyRule,
    pub rpc: MethodDescriptor,
}

/// The descriptor set has no `google.api.http` extension, or a rule that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    #[error("the descriptor set does not define google.api.http")]
    NoHttpExtension,
    #[error("{rpc}: {source}")]
    Template {
        rpc: String,
        #[source]
        source: TemplateError,
    },
    #[error("{rpc}: custom HTTP method {kind:?} is not a valid method")]
    Method { rpc: String, kind: String },
}

/// Every binding of every method of `services` (full names) in `pool`, in declaration order.
///
/// # Errors
/// A [`RulesError`] naming the method whose rule cannot be served.
pub fn bindings(pool: &DescriptorPool, services: &[&str]) -> Result<Vec<Binding>, RulesError> {
    let http = pool
        .get_extension_by_name("google.api.http")
        .ok_or(RulesError::NoHttpExtension)?;
    let mut all = Vec::new();
    for service in pool
        .services()
        .filter(|s| services.contains(&s.full_name()))
    {
        for rpc in service.methods() {
            let options = rpc.options();
            if !options.has_extension(&http) {
                continue;
            }
            if let Value::Message(rule) = options.get_extension(&http).as_ref() {
                push_rule(&mut all, &rpc, rule)?;
                if let Some(Value::List(more)) =
                    rule.get_field_by_name("additional_bindings").as_deref()
                {
                    for extra in more {
                        if let Value::Message(extra) = extra {
                            push_rule(&mut all, &rpc, extra)?;
                        }
                    }
                }
            }
        }
    }
    Ok(all)
}

/// The first binding for `method` whose template matches `path`, and the fields it binds.
#[must_use]
pub fn route<'a>(
    bindings: &'a [Binding],
    method: &Method,
    path: &str,
) -> Option<(&'a Binding, Vec<(String, String)>)> {
    bindings
        .iter()
        .filter(|b| b.method == *method)
        .find_map(|b| Some((b, b.template.matches(path)?)))
}

fn push_rule(
    all: &mut Vec<Binding>,
    rpc: &MethodDescriptor,
    rule: &DynamicMessage,
) -> Result<(), RulesError> {
    let text = |name: &str| match rule.get_field_by_name(name).as_deref() {
        Some(Value::String(s)) if rule.has_field_by_name(name) => Some(s.clone()),
        _ => None,
    };
    let mut pattern = None;
    for (name, method) in [
        ("get", Method::GET),
        ("put", Method::PUT),
        ("post", Method::POST),
        ("delete", Method::DELETE),
        ("patch", Method::PATCH),
    ] {
        if let Some(path) = text(name) {
            pattern = Some((method, path));
        }
    }
    if rule.has_field_by_name("custom")
        && let Some(Value::Message(custom)) = rule.get_field_by_name("custom").as_deref()
    {
        let field = |name: &str| match custom.get_field_by_name(name).as_deref() {
            Some(Value::String(s)) => s.clone(),
            _ => String::new(),
        };
        let kind = field("kind");
        let method = Method::from_bytes(kind.as_bytes()).map_err(|_| RulesError::Method {
            rpc: rpc.full_name().to_owned(),
            kind: kind.clone(),
        })?;
        pattern = Some((method, field("path")));
    }
    let Some((method, path)) = pattern else {
        return Ok(());
    };
    let template = PathTemplate::parse(&path).map_err(|source| RulesError::Template {
        rpc: rpc.full_name().to_owned(),
        source,
    })?;
    let body = match text("body").as_deref() {
        None | Some("") => BodyRule::None,
        Some("*") => BodyRule::Whole,
        Some(field) => BodyRule::Field(field.to_owned()),
    };
    all.push(Binding {
        method,
        template,
        body,
        rpc: rpc.clone(),
    });
    Ok(())
}
