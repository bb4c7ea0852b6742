//! Schedules: a job's cron expression (UTC) and the times it names.

use croner::Cron;

/// Parses a standard cron expression.
pub(crate) fn parse(expr: &str) -> Result<Cron, String> {
    expr.parse::<Cron>()
        .map_err(|e| format!("`{expr}` is not a cron expression: {e}"))
}
