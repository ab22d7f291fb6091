"""Every renderer: terminal tables, Markdown, JSON documents, GitHub outputs, the chart.

    text      the shared primitives: cells, `grid`, the Markdown escaper, the JSON envelope
    decision  gate and rollback reports (table, --json, Markdown, the record's files)
    status    `promote status` and `promote history`
    preview   `promote policy preview`
    github    step outputs and the job summary
    chart     the decision chart (matplotlib, imported only when one is drawn)

Renderers take frozen results (promotion.engine) and return text or bytes; they never read the
registry, and nothing outside this package formats output for people. Import them from their
module (`from promotion.report.decision import table`): this package imports nothing itself, so
that `promote policy validate` pays only for the policy renderers.
"""

