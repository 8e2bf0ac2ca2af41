//! `servelens report` flags and the command: re-render one run, or compare two.

use std::path::PathBuf;

use crate::bench::stats::Bootstrap;
use crate::report::{compare_runs, render_run, ReportError, Run};

/// Flags of `servelens report`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// A run directory (`results/<run-id>`); a second one to compare the two.
    #[arg(required = true, num_args = 1..=2, value_name = "RUN_DIR")]
    pub runs: Vec<PathBuf>,
    /// Targets to compare, `A,B`: of the one run, or A of the first run and B of the second
    /// (default: the first two targets of one run, the first target of each of two runs).
    #[arg(long, value_name = "A,B")]
    pub targets: Option<String>,
    /// Bootstrap resamples for the confidence intervals.
    #[arg(long, default_value_t = 1000)]
    pub resamples: usize,
    /// Bootstrap seed (the same seed gives the same intervals).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Where to write the comparison page of two runs (default: `compare.html` in the second
    /// run's directory).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs `servelens report`, printing tables to `out`.
pub fn run(args: ReportArgs, out: &mut impl std::io::Write) -> Result<(), ReportError> {
    let bootstrap = Bootstrap {
        resamples: args.resamples.max(1),
        seed: args.seed,
        level: 0.95,
    };
    let (ta, tb) = match args.targets.as_deref().map(|t| t.split_once(',')) {
        Some(Some((a, b))) => (Some(a.trim().to_string()), Some(b.trim().to_string())),
        Some(None) => (args.targets.clone(), None),
        None => (None, None),
    };
    let written = |e: std::io::Error| ReportError::Io {
        path: PathBuf::from("<stdout>"),
        source: e,
    };
    match args.runs.as_slice() {
        [one] => {
            let run = Run::load(one)?;
            let (summary, comparisons) = render_run(&run, bootstrap)?;
            write!(out, "{}", summary.table()).map_err(written)?;
            if let (Some(a), Some(b)) = (&ta, &tb) {
                let (_, sa) = run.target(Some(a))?;
                let (_, sb) = run.target(Some(b))?;
                let c = crate::report::compare::compare(a, &sa, b, &sb, bootstrap);
                write!(out, "\n{}", c.table()).map_err(written)?;
            } else {
                for c in &comparisons {
                    write!(out, "\n{}", c.table()).map_err(written)?;
                }
            }
            writeln!(
                out,
                "\nwrote {} and {}",
                one.join(crate::report::files::SUMMARY).display(),
                one.join(crate::report::files::REPORT).display()
            )
            .map_err(written)?;
            Ok(())
        }
        [first, second] => {
            let (a, b) = (Run::load(first)?, Run::load(second)?);
            let page = args
                .out
                .clone()
                .unwrap_or_else(|| second.join("compare.html"));
            let (summary, comparison) =
                compare_runs(&a, ta.as_deref(), &b, tb.as_deref(), bootstrap, &page)?;
            write!(out, "{}\n{}", summary.table(), comparison.table()).map_err(written)?;
            writeln!(out, "\nwrote {}", page.display()).map_err(written)?;
            Ok(())
        }
        _ => Err(ReportError::NothingToCompare("(none given)".into())),
    }
}
