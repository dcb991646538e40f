//! Check results and their rendering as text or JSON.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Verdict {
    Ok,
    Skip,
    Warn,
    Fail,
}

impl Verdict {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Verdict::Ok => " OK ",
            Verdict::Skip => "SKIP",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        }
    }
}

/// One finding: what was checked, what was found, and for problems why and how to fix it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Check {
    pub id: String,
    pub status: Verdict,
    pub summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    pub(crate) fn new(id: impl Into<String>, status: Verdict, summary: impl Into<String>) -> Check {
        Check {
            id: id.into(),
            status,
            summary: summary.into(),
            why: None,
            fix: None,
        }
    }
    pub(crate) fn ok(id: impl Into<String>, summary: impl Into<String>) -> Check {
        Check::new(id, Verdict::Ok, summary)
    }
    pub(crate) fn skip(id: impl Into<String>, summary: impl Into<String>) -> Check {
        Check::new(id, Verdict::Skip, summary)
    }
    pub(crate) fn problem(
        id: impl Into<String>,
        status: Verdict,
        summary: impl Into<String>,
        why: impl Into<String>,
        fix: impl Into<String>,
    ) -> Check {
        Check {
            id: id.into(),
            status,
            summary: summary.into(),
            why: Some(why.into()),
            fix: Some(fix.into()),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub(crate) struct Report {
    pub ok: bool,
    pub failures: usize,
    pub warnings: usize,
    pub checks: Vec<Check>,
}

impl Report {
    pub(crate) fn new(checks: Vec<Check>) -> Report {
        let failures = checks.iter().filter(|c| c.status == Verdict::Fail).count();
        let warnings = checks.iter().filter(|c| c.status == Verdict::Warn).count();
        Report {
            ok: failures == 0,
            failures,
            warnings,
            checks,
        }
    }

    pub(crate) fn exit_code(&self) -> i32 {
        i32::from(!self.ok)
    }

    pub(crate) fn render_text(&self) -> String {
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!("[{}] {}: {}\n", c.status.label(), c.id, c.summary));
            if let Some(why) = &c.why {
                out.push_str(&format!("       why: {why}\n"));
            }
            if let Some(fix) = &c.fix {
                out.push_str(&format!("       fix: {fix}\n"));
            }
        }
        out.push_str(&match (self.failures, self.warnings) {
            (0, 0) => "\nno problems found\n".to_string(),
            (0, w) => format!("\n{w} warning(s), no failures\n"),
            (f, w) => format!("\n{f} failure(s), {w} warning(s): apply the fixes above\n"),
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_text_json_and_exit_code() {
        let r = Report::new(vec![
            Check::ok("a", "fine"),
            Check::problem("bb", Verdict::Warn, "meh", "because", "do this"),
        ]);
        assert!(r.ok);
        assert_eq!(r.exit_code(), 0);
        let t = r.render_text();
        assert!(
            t.contains("[ OK ] a: fine\n[WARN] bb: meh\n       why: because\n"),
            "{t}"
        );
        assert!(
            t.contains("why: because") && t.contains("fix: do this"),
            "{t}"
        );
        assert!(t.contains("1 warning(s), no failures"), "{t}");

        let r = Report::new(vec![Check::problem("c", Verdict::Fail, "bad", "w", "f")]);
        assert!(!r.ok);
        assert_eq!(r.exit_code(), 1);
        let v: serde_json::Value = serde_json::to_value(&r).unwrap();
        assert_eq!(v["failures"], 1);
        assert_eq!(v["checks"][0]["status"], "fail");
        assert_eq!(v["checks"][0]["fix"], "f");
        let ok: serde_json::Value = serde_json::to_value(Check::ok("x", "y")).unwrap();
        assert!(ok.get("fix").is_none());
    }
}
