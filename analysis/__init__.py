"""The reference-study report: make_report (CLI), lawstudy, tables, noise, targets, figures, report."""
