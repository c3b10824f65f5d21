"""The run report: see and trust a finished run's data.

`writer.write_report` (and `writer.report_or_error`, which never raises) is what the CLI, the
local run and the parse Job call. The rest, in the order the data flows:

- `collect` (I/O): streams the run's artifacts into `stats.RunStats`;
- `stats`, `ranking`, `diagnostics`, `document` (pure): aggregates, model ranking, bias
  warnings, and the report as data (`report/report.json`);
- `render` (matplotlib, SVG) and `page` (pure HTML): `report/index.html`;
- `provenance` and `card` (pure): `dataset/provenance.json` and `dataset/README.md`.
"""
