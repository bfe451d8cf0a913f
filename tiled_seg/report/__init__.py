"""Quality-control report of a segmented store: figures and an HTML page."""

from tiled_seg.report._build import ReportResult, write_report

__all__ = ["ReportResult", "write_report"]
