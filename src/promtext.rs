//! A reader of the Prometheus text exposition format (version 0.0.4): a `/metrics` page in, typed
//! samples out. Pure, no IO.
//!
//! It owns exactly what the bench's before/after scrape and the gateway's backend scrape need:
//! `# HELP` and `# TYPE` lines (other comments are skipped), metric names with `:` (vLLM's
//! `vllm:...`, SGLang's `sglang:...`), label values with the three escapes `\\`, `\"` and `\n`,
//! values in Go's float syntax (`1.84352e+06`, `+Inf`, `-Inf`, `NaN`) and an optional timestamp.
//! Series such as `x_total`, `x_created`, `x_bucket`, `x_sum`, `x_count` are samples of their own;
//! [`family_name`] maps them back to the family a `# TYPE` line names.

use std::collections::HashMap;

/// The declared type of a metric family (`# TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    /// `counter`.
    Counter,
    /// `gauge`.
    Gauge,
    /// `histogram`.
    Histogram,
    /// `summary`.
    Summary,
    /// `untyped` or anything else.
    Untyped,
}

impl MetricType {
    fn parse(word: &str) -> Self {
        match word {
            "counter" => Self::Counter,
            "gauge" => Self::Gauge,
            "histogram" => Self::Histogram,
            "summary" => Self::Summary,
            _ => Self::Untyped,
        }
    }
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The series name as written (`vllm:prefix_cache_hits_total`).
    pub name: String,
    /// Labels in the order written, values unescaped.
    pub labels: Vec<(String, String)>,
    /// The value.
    pub value: f64,
    /// Milliseconds since the epoch, when the line carried one.
    pub timestamp_ms: Option<i64>,
}

impl Sample {
    /// The value of label `key`.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// True when every `(key, value)` pair is among the labels.
    pub fn matches(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(k, v)| self.label(k) == Some(*v))
    }
}

/// Help text and type of one family.
#[derive(Debug, Clone, PartialEq)]
pub struct Family {
    /// `# HELP` text, unescaped.
    pub help: Option<String>,
    /// `# TYPE`.
    pub kind: Option<MetricType>,
}

/// A parsed page.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape {
    /// Every sample, in page order.
    pub samples: Vec<Sample>,
    /// Families by name, from `# HELP` / `# TYPE` lines.
    pub families: HashMap<String, Family>,
}

/// Why a page did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("metrics line {line}: {message}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What was wrong.
    pub message: String,
}

impl Scrape {
    /// Parses a whole page.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mut scrape = Scrape::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let fail = |message: String| ParseError {
                line: i + 1,
                message,
            };
            if let Some(comment) = line.strip_prefix('#') {
                scrape.comment(comment.trim_start()).map_err(fail)?;
            } else {
                scrape.samples.push(parse_sample(line).map_err(fail)?);
            }
        }
        Ok(scrape)
    }

    fn comment(&mut self, comment: &str) -> Result<(), String> {
        let (keyword, rest) = comment.split_once(' ').unwrap_or((comment, ""));
        let (name, text) = rest.trim_start().split_once(' ').unwrap_or((rest, ""));
        match keyword {
            "HELP" => {
                self.family(name).help = Some(unescape_help(text));
            }
            "TYPE" => {
                self.family(name).kind = Some(MetricType::parse(text.trim()));
            }
            _ => {}
        }
        Ok(())
    }

    fn family(&mut self, name: &str) -> &mut Family {
        self.families.entry(name.to_string()).or_insert(Family {
            help: None,
            kind: None,
        })
    }

    /// Samples named `name` whose labels include `labels`.
    pub fn series<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples
            .iter()
            .filter(move |s| s.name == name && s.matches(labels))
    }

    /// The sum of the matching samples, or `None` when there is none (absent, not zero).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = false;
        let mut total = 0.0;
        for sample in self.series(name, labels) {
            found = true;
            total += sample.value;
        }
        found.then_some(total)
    }

    /// The declared type of the family `series` belongs to.
    pub fn kind_of(&self, series: &str) -> Option<MetricType> {
        self.families
            .get(series)
            .or_else(|| self.families.get(family_name(series)))
            .and_then(|f| f.kind)
    }
}

/// Parses a page leniently: lines that do not parse are skipped (a scrape must not fail because
/// one exporter wrote one odd line). [`Scrape::parse`] is the strict reader.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .filter_map(|line| parse_sample(line).ok())
        .collect()
}

/// The sum over the series of the first of `names` present in `samples` (alternatives, e.g. a
/// metric and its older spelling, are never added together). `None` when none is present.
pub fn sum_any(samples: &[Sample], names: &[&str]) -> Option<f64> {
    let (sum, _) = first_present(samples, names)?;
    Some(sum)
}

/// The mean over the series of the first of `names` present in `samples` (e.g. a ratio reported
/// per engine). `None` when none is present.
pub fn mean_any(samples: &[Sample], names: &[&str]) -> Option<f64> {
    let (sum, count) = first_present(samples, names)?;
    Some(sum / count as f64)
}

fn first_present(samples: &[Sample], names: &[&str]) -> Option<(f64, usize)> {
    names.iter().find_map(|name| {
        let (sum, count) = samples
            .iter()
            .filter(|s| s.name == *name)
            .fold((0.0, 0usize), |(sum, n), s| (sum + s.value, n + 1));
        (count > 0).then_some((sum, count))
    })
}

/// The family a series belongs to: strips `_total`, `_created`, `_bucket`, `_sum`, `_count`.
pub fn family_name(series: &str) -> &str {
    ["_total", "_created", "_bucket", "_sum", "_count"]
        .iter()
        .find_map(|suffix| series.strip_suffix(suffix))
        .unwrap_or(series)
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .ok_or_else(|| format!("no value in `{line}`"))?;
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!("bad metric name `{name}`"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(inner)?;
        labels = parsed;
        rest = after;
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = fields
        .next()
        .ok_or_else(|| format!("no value for `{name}`"))
        .and_then(parse_value)?;
    let timestamp_ms = fields
        .next()
        .map(|t| {
            t.parse::<i64>()
                .map_err(|_| format!("bad timestamp `{t}` for `{name}`"))
        })
        .transpose()?;
    if let Some(extra) = fields.next() {
        return Err(format!("unexpected `{extra}` after the sample of `{name}`"));
    }
    Ok(Sample {
        name: name.to_string(),
        labels,
        value,
        timestamp_ms,
    })
}

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Parses `k="v",k2="v2"}` (after the `{`), returning the labels and the text after `}`.
/// Label pairs as written.
type Labels = Vec<(String, String)>;

fn parse_labels(mut s: &str) -> Result<(Labels, &str), String> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("label without `=`")?;
        let key = s[..eq].trim();
        if !valid_name(key) || key.contains(':') {
            return Err(format!("bad label name `{key}`"));
        }
        let value_start = s[eq + 1..].trim_start();
        let quoted = value_start
            .strip_prefix('"')
            .ok_or_else(|| format!("label `{key}` value is not quoted"))?;
        let (value, after) = unescape_label(quoted).ok_or("unterminated label value")?;
        labels.push((key.to_string(), value));
        s = after.trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(format!("expected `,` or `}}` after label `{key}`"));
        }
    }
}

/// Reads a label value up to its closing quote, resolving `\\`, `\"` and `\n`.
fn unescape_label(s: &str) -> Option<(String, &str)> {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 1..])),
            '\\' => match chars.next()?.1 {
                'n' => out.push('\n'),
                other => out.push(other),
            },
            other => out.push(other),
        }
    }
    None
}

fn unescape_help(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

fn parse_value(s: &str) -> Result<f64, String> {
    match s {
        "+Inf" | "Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => s.parse::<f64>().map_err(|_| format!("bad value `{s}`")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_help_type_labels_and_go_floats() {
        let page = "# HELP vllm:prefix_cache_queries_total Prefix cache queries.\n\
                    # TYPE vllm:prefix_cache_queries_total counter\n\
                    vllm:prefix_cache_queries_total{engine=\"0\",model_name=\"m\"} 1.84352e+06\n\
                    vllm:prefix_cache_queries_created{engine=\"0\",model_name=\"m\"} 1.795335231355631e+09\n";
        let scrape = Scrape::parse(page).expect("parses");
        assert_eq!(scrape.samples.len(), 2);
        assert_eq!(scrape.samples[0].value, 1_843_520.0);
        assert_eq!(scrape.samples[0].label("model_name"), Some("m"));
        assert_eq!(
            scrape.kind_of("vllm:prefix_cache_queries_total"),
            Some(MetricType::Counter)
        );
        assert_eq!(
            scrape.families["vllm:prefix_cache_queries_total"]
                .help
                .as_deref(),
            Some("Prefix cache queries.")
        );
        assert_eq!(
            scrape.sum("vllm:prefix_cache_queries_created", &[("engine", "0")]),
            Some(1.795335231355631e9)
        );
        assert_eq!(scrape.sum("absent", &[]), None);
    }

    #[test]
    fn label_escapes_inf_nan_and_timestamps() {
        let page = r#"x_bucket{le="+Inf",path="C:\\dir\"q\"\nz"} 3 1700000000000
y NaN
z{} -Inf
h_bucket{le="0.5" , a="b",} +Inf
"#;
        let scrape = Scrape::parse(page).expect("parses");
        let x = &scrape.samples[0];
        assert_eq!(x.label("le"), Some("+Inf"));
        assert_eq!(x.label("path"), Some("C:\\dir\"q\"\nz"));
        assert_eq!(x.timestamp_ms, Some(1_700_000_000_000));
        assert!(scrape.samples[1].value.is_nan());
        assert_eq!(scrape.samples[2].value, f64::NEG_INFINITY);
        assert!(scrape.samples[2].labels.is_empty());
        assert_eq!(scrape.samples[3].value, f64::INFINITY);
        assert_eq!(scrape.samples[3].labels.len(), 2);
    }

    #[test]
    fn family_names_strip_series_suffixes() {
        assert_eq!(
            family_name("vllm:prefix_cache_hits_total"),
            "vllm:prefix_cache_hits"
        );
        assert_eq!(family_name("x_created"), "x");
        assert_eq!(family_name("x_bucket"), "x");
        assert_eq!(family_name("gauge"), "gauge");
    }

    #[test]
    fn reports_the_bad_line() {
        let err = Scrape::parse("ok 1\nbad{a=1} 2\n").expect_err("unquoted label");
        assert_eq!(err.line, 2);
        let err = Scrape::parse("ok 1\n\nnovalue\n").expect_err("no value");
        assert_eq!(err.line, 3);
        assert!(Scrape::parse("a{b=\"c} 1").is_err());
        assert!(Scrape::parse("a 1 2 3").is_err());
        assert!(Scrape::parse("a one").is_err());
    }

    #[test]
    fn lenient_parse_and_first_present_alternative() {
        let samples = parse("a{e=\"0\"} 2\nbad line here\na{e=\"1\"} 4\nold_a 100\n# HELP x y\n");
        assert_eq!(samples.len(), 3);
        assert_eq!(sum_any(&samples, &["a", "old_a"]), Some(6.0));
        assert_eq!(mean_any(&samples, &["a", "old_a"]), Some(3.0));
        assert_eq!(sum_any(&samples, &["missing", "old_a"]), Some(100.0));
        assert_eq!(mean_any(&samples, &["missing"]), None);
    }

    #[test]
    fn parses_the_recorded_vllm_and_sglang_pages() {
        for page in [
            include_str!("../tests/fixtures/vllm_metrics.txt"),
            include_str!("../tests/fixtures/sglang_metrics.txt"),
        ] {
            let scrape = Scrape::parse(page).expect("recorded page parses");
            let data_lines = page
                .lines()
                .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
                .count();
            assert_eq!(scrape.samples.len(), data_lines);
        }
        let vllm =
            Scrape::parse(include_str!("../tests/fixtures/vllm_metrics.txt")).expect("parses");
        assert_eq!(
            vllm.sum("vllm:prefix_cache_hits_total", &[]),
            Some(1_105_408.0)
        );
        assert_eq!(vllm.sum("vllm:num_requests_waiting", &[]), Some(3.0));
    }
}
