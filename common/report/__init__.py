"""report.html: the page's data, HTML, script, and S6's truth panel."""
