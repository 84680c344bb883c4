//! Path templates of `google.api.http` rules (`/v1/chambers/{id}:pause`), parsed once and
//! matched against request paths.
//!
//! The grammar is google/api/http.proto's:
//! `Template = "/" Segments [ Verb ]`, `Segment = "*" | "**" | LITERAL | Variable`,
//! `Variable = "{" FieldPath [ "=" Segments ] "}"`, `Verb = ":" LITERAL`.

use percent_encoding::percent_decode_str;

/// One parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    segments: Vec<Segment>,
    verb: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    /// `*`: one segment, bound to nothing (or to the enclosing variable).
    Any,
    /// `**`: the rest of the path (last only).
    Rest,
    /// `{field.path=...}` with its own segments (`*` when none is written).
    Variable {
        field: String,
        segments: Vec<Segment>,
    },
}

/// A template that does not follow the grammar.
#[derive(Debug, thiserror::Error)]
#[error("path template {template:?}: {problem}")]
pub struct TemplateError {
    template: String,
    problem: &'static str,
}

impl PathTemplate {
    /// Parses `template`.
    ///
    /// # Errors
    /// A [`TemplateError`] naming the template and what is wrong with it.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let error = |problem| TemplateError {
            template: template.to_owned(),
            problem,
        };
        let rest = template
            .strip_prefix('/')
            .ok_or_else(|| error("does not start with '/'"))?;
        // The verb follows the last ':' outside braces.
        let (path, verb) = match rest.rfind(':') {
            Some(at) if !rest[at..].contains('}') => (&rest[..at], Some(rest[at + 1..].to_owned())),
            _ => (rest, None),
        };
        let segments = parse_segments(path).ok_or_else(|| error("is not a valid template"))?;
        if let Some(at) = segments.iter().position(is_rest)
            && at + 1 != segments.len()
        {
            return Err(error("has '**' before its last segment"));
        }
        Ok(Self { segments, verb })
    }

    /// The fields bound by `path` (percent-decoded values), or `None` when it does not match.
    #[must_use]
    pub fn matches(&self, path: &str) -> Option<Vec<(String, String)>> {
        let rest = path.strip_prefix('/')?;
        let rest = match &self.verb {
            Some(verb) => rest.strip_suffix(verb.as_str())?.strip_suffix(':')?,
            None => rest,
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let mut bound = Vec::new();
        let used = match_segments(&self.segments, &parts, &mut bound)?;
        (used == parts.len()).then_some(bound)
    }
}

fn is_rest(segment: &Segment) -> bool {
    match segment {
        Segment::Rest => true,
        Segment::Variable { segments, .. } => segments.iter().any(is_rest),
        _ => false,
    }
}

fn parse_segments(text: &str) -> Option<Vec<Segment>> {
    let mut segments = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (segment, after) = if let Some(inner) = rest.strip_prefix('{') {
            let close = inner.find('}')?;
            let (field, pattern) = match inner[..close].split_once('=') {
                Some((field, pattern)) => (field, parse_segments(pattern)?),
                None => (&inner[..close], vec![Segment::Any]),
            };
            let valid = !field.is_empty()
                && field.split('.').all(|p| {
                    !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                });
            if !valid {
                return None;
            }
            (
                Segment::Variable {
                    field: field.to_owned(),
                    segments: pattern,
                },
                &inner[close + 1..],
            )
        } else {
            let end = rest.find('/').unwrap_or(rest.len());
            let segment = match &rest[..end] {
                "" => return None,
                "*" => Segment::Any,
                "**" => Segment::Rest,
                literal if literal.contains(['{', '}', '=']) => return None,
                literal => Segment::Literal(literal.to_owned()),
            };
            (segment, &rest[end..])
        };
        segments.push(segment);
        rest = match after.strip_prefix('/') {
            Some(next) if !next.is_empty() => next,
            Some(_) => return None,
            None if after.is_empty() => after,
            None => return None,
        };
    }
    (!segments.is_empty()).then_some(segments)
}

/// Matches `segments` against the start of `parts`; the number of parts used.
fn match_segments(
    segments: &[Segment],
    parts: &[&str],
    bound: &mut Vec<(String, String)>,
) -> Option<usize> {
    let mut used = 0;
    for segment in segments {
        match segment {
            Segment::Literal(literal) => {
                (parts.get(used)? == literal).then_some(())?;
                used += 1;
            }
            Segment::Any => {
                (!parts.get(used)?.is_empty()).then_some(())?;
                used += 1;
            }
            Segment::Rest => used = parts.len(),
            Segment::Variable { field, segments } => {
                let start = used;
                let mut inner = Vec::new();
                used += match_segments(segments, &parts[start..], &mut inner)?;
                let value = if used - start == 1 {
                    // One segment: every escape decoded, '/' included.
                    percent_decode_str(parts[start])
                        .decode_utf8()
                        .ok()?
                        .into_owned()
                } else {
                    // Several: the slashes are the path's, escaped ones stay escaped.
                    parts[start..used]
                        .iter()
                        .map(|p| {
                            percent_decode_str(&p.replace("%2F", "%252F").replace("%2f", "%252f"))
                                .decode_utf8()
                                .map(std::borrow::Cow::into_owned)
                        })
                        .collect::<Result<Vec<_>, _>>()
                        .ok()?
                        .join("/")
                };
                bound.push((field.clone(), value));
            }
        }
    }
    Some(used)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bound(template: &str, path: &str) -> Option<Vec<(String, String)>> {
        PathTemplate::parse(template).unwrap().matches(path)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn literals_variables_and_verbs_match_and_bind() {
        assert_eq!(bound("/v1/chambers", "/v1/chambers"), Some(vec![]));
        assert_eq!(bound("/v1/chambers", "/v1/chambers/x"), None);
        assert_eq!(
            bound("/v1/chambers/{id}", "/v1/chambers/a%20b"),
            Some(pairs(&[("id", "a b")]))
        );
        assert_eq!(bound("/v1/chambers/{id}", "/v1/chambers/"), None);
        assert_eq!(
            bound("/v1/chambers/{id}:pause", "/v1/chambers/7:pause"),
            Some(pairs(&[("id", "7")]))
        );
        assert_eq!(bound("/v1/chambers/{id}:pause", "/v1/chambers/7"), None);
        assert_eq!(
            bound("/v1/chambers/{id}", "/v1/chambers/7:pause").map(|b| b[0].1.clone()),
            Some("7:pause".into())
        );
        assert_eq!(bound("/v1/auth:signIn", "/v1/auth:signIn"), Some(vec![]));
        assert_eq!(bound("/v1/auth:signIn", "/v1/auth"), None);
        assert_eq!(
            bound(
                "/v1/chambers/{chamber_id}/detectors",
                "/v1/chambers/c/detectors"
            ),
            Some(pairs(&[("chamber_id", "c")]))
        );
        assert_eq!(
            bound("/v1/{name=shelves/*/books/*}", "/v1/shelves/1/books/2"),
            Some(pairs(&[("name", "shelves/1/books/2")]))
        );
        assert_eq!(
            bound("/v1/files/{path=**}", "/v1/files/a/b%2Fc"),
            Some(pairs(&[("path", "a/b%2Fc")]))
        );
        assert_eq!(
            bound("/v1/{a.b}/*", "/v1/x/y"),
            Some(pairs(&[("a.b", "x")]))
        );
    }

    #[test]
    fn malformed_templates_are_refused() {
        for bad in [
            "v1/x",
            "/v1//x",
            "/v1/{}",
            "/v1/{a",
            "/v1/**/x",
            "/v1/{a-b}",
            "/v1/x/",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
    }
}
