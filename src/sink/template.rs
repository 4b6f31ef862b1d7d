//! Subject and routing-key templates: literal text with the placeholders `{source}` (the
//! source name) and `{event}` (the event type), such as `makini.{event}`.

use std::borrow::Cow;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Literal(String),
    Source,
    Event,
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

impl Template {
    /// Parses `text`. A brace that does not open `{source}` or `{event}`, or close one, is an
    /// error, so a misspelt placeholder cannot pass as literal text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find(['{', '}']) {
            if rest[open..].starts_with('}') {
                return Err(format!("template {text:?} has a '}}' without a '{{'"));
            }
            if open > 0 {
                parts.push(Part::Literal(rest[..open].to_owned()));
            }
            let after = &rest[open + 1..];
            let close = after
                .find('}')
                .ok_or_else(|| format!("template {text:?} has a '{{' without a '}}'"))?;
            parts.push(match &after[..close] {
                "source" => Part::Source,
                "event" => Part::Event,
                other => {
                    return Err(format!(
                        "template {text:?} has the unknown placeholder {{{other}}}; use {{source}} or {{event}}"
                    ));
                }
            });
            rest = &after[close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Literal(rest.to_owned()));
        }
        if parts.is_empty() {
            return Err("template is empty".into());
        }
        Ok(Self { parts })
    }

    /// Fills in the placeholders, passing each value through `escape` first.
    pub fn render<'a>(
        &self,
        source: &'a str,
        event_type: &'a str,
        escape: impl Fn(&'a str) -> Cow<'a, str>,
    ) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Literal(text) => out.push_str(text),
                Part::Source => out.push_str(&escape(source)),
                Part::Event => out.push_str(&escape(event_type)),
            }
        }
        out
    }

    /// Returns the literal text before the first placeholder.
    pub fn literal_prefix(&self) -> &str {
        match self.parts.first() {
            Some(Part::Literal(text)) => text,
            _ => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain(text: &str) -> Cow<'_, str> {
        Cow::Borrowed(text)
    }

    #[test]
    fn placeholders_are_replaced() {
        let template = Template::parse("hooks.{source}.{event}").unwrap();
        assert_eq!(
            template.render("makini", "work_orders.inserted", plain),
            "hooks.makini.work_orders.inserted"
        );
        assert_eq!(template.literal_prefix(), "hooks.");
    }

    #[test]
    fn template_without_placeholders_is_literal() {
        let template = Template::parse("events").unwrap();
        assert_eq!(template.render("a", "b", plain), "events");
    }

    #[test]
    fn unknown_placeholder_is_rejected() {
        let err = Template::parse("makini.{type}").unwrap_err();
        assert!(err.contains("{type}"), "{err}");
    }

    #[test]
    fn unbalanced_braces_are_rejected() {
        assert!(Template::parse("makini.{event").is_err());
        assert!(Template::parse("makini.event}").is_err());
        assert!(Template::parse("").is_err());
    }
}
